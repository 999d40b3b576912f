"""Settings of a dicom-node, read from a TOML file with environment overrides.

Every section forbids unknown keys, so a typo in ``/etc/dicom-node/dicom-node.toml``
fails at start-up with the key's dotted path instead of being silently ignored.
Environment variables named ``DICOM_NODE_<SECTION>__<KEY>`` override the file; they
are meant for secrets and the database URL, which should not sit in a world-readable
config file (``DICOM_NODE_DATABASE__URL``, ``DICOM_NODE_TLS__PRIVATE_KEY_PASSWORD``).

Relative paths (storage root, SQLite file, audit file, TLS files, model folders) are
anchored when the file is loaded, so every command given the same ``--config`` finds the
same database from any directory: a path in the file, or a default, is relative to the
file's folder; a path in an environment variable is relative to the directory the
command starts in, as a shell would read it. :func:`load_settings` returns absolute paths.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from dicom_node.errors import ConfigError
from dicom_node.uid_syntax import is_valid_uid_root

ENV_PREFIX = "DICOM_NODE_"
#: The environment variable every command reads its settings file from when --config is not given.
CONFIG_ENV = "DICOM_NODE_CONFIG"


def _check_ae_title(value: str) -> str:
    """PS3.5 AE VR: 1-16 characters of the default repertoire, no backslash, not all spaces."""
    stripped = value.strip()
    if not stripped:
        raise ValueError("an AE title must not be empty or all spaces")
    if len(value) > 16:
        raise ValueError("an AE title has at most 16 characters (PS3.5 AE VR)")
    if "\\" in value or any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        raise ValueError("an AE title uses printable ASCII without backslash (PS3.5 AE VR)")
    return stripped


def _check_uid_root(value: str) -> str:
    """A UID root: dot-separated numeric components, no leading zeros, short enough to extend."""
    if not is_valid_uid_root(value):
        raise ValueError("a UID root is dot-separated digits without leading zeros (PS3.5 9.1)")
    if len(value) > 40:
        raise ValueError("a UID root longer than 40 characters leaves too little room for suffixes")
    return value + ("" if value.endswith(".") else ".")


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    return value


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
Port = Annotated[int, Field(ge=1, le=65535)]
Regex = Annotated[str, AfterValidator(_check_regex)]


class _Section(BaseModel):
    """A config section: unknown keys are errors, values are read-only after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowedCaller(_Section):
    """A peer allowed to open associations: its AE title and, optionally, its address."""

    ae_title: AETitle = Field(description="the calling AE title the peer uses (1-16 characters)")
    host: str | None = Field(
        default=None, description="IP address or CIDR network; absent means any host"
    )

    @model_validator(mode="after")
    def _host_is_address(self) -> AllowedCaller:
        if self.host is not None:
            try:
                ipaddress.ip_network(self.host, strict=False)
            except ValueError as exc:
                raise ValueError(f"host {self.host!r} is not an IP address or network") from exc
        return self

    def admits(self, ae_title: str, address: str) -> bool:
        """True when a caller with this AE title, connecting from ``address``, matches."""
        if ae_title.strip() != self.ae_title:
            return False
        if self.host is None:
            return True
        try:
            return ipaddress.ip_address(address) in ipaddress.ip_network(self.host, strict=False)
        except ValueError:
            return False


class NodeSettings(_Section):
    """The DICOM application entity we present to the network."""

    ae_title: AETitle = Field(
        default="DICOMNODE", description="our AE title: the called AE title a PACS sends to (1-16 characters)"
    )
    bind_address: str = Field(
        default="127.0.0.1", description="IP address the listener accepts on; 0.0.0.0 for every interface"
    )
    port: Port = Field(default=11112, description="TCP port of the DICOM listener (104 is the well-known one)")
    allowed_callers: list[AllowedCaller] = Field(
        default_factory=list,
        description="peers that may send: [[node.allowed_callers]] tables of ae_title and optional host",
    )
    allow_any_caller: bool = Field(
        default=False, description="accept every calling AE title; for testing only"
    )
    require_called_ae_title: bool = Field(
        default=True, description="refuse associations addressed to another AE title"
    )
    max_associations: int = Field(
        default=10, ge=1, le=1000, description="associations open at once, per listener process; more are rejected"
    )
    listener_processes: int = Field(
        default=2,
        ge=1,
        le=64,
        description="processes accepting on the port; each uses one CPU core at most (one GIL)",
    )
    acse_timeout_s: float = Field(default=30.0, gt=0, description="seconds to wait for association messages")
    dimse_timeout_s: float = Field(default=60.0, gt=0, description="seconds to wait for the next DIMSE message")
    network_timeout_s: float = Field(default=60.0, gt=0, description="seconds without network traffic before an association is aborted")
    max_pdu_size: int = Field(
        # 1 MiB: a 512x512 CT slice arrives in one PDU instead of eight, which costs the
        # listener about a fifth less CPU per instance (tests/bench/ingest.py --max-pdu).
        default=1048576, ge=0, description="largest P-DATA PDU we accept, in bytes; 0 means unlimited"
    )

    @model_validator(mode="after")
    def _someone_may_call(self) -> NodeSettings:
        if not self.allowed_callers and not self.allow_any_caller:
            raise ValueError(
                "no caller could ever connect: list node.allowed_callers "
                "or set node.allow_any_caller = true"
            )
        return self

    def admits(self, ae_title: str, address: str) -> bool:
        """True when the calling AE title and address may open an association."""
        if self.allow_any_caller:
            return True
        return any(caller.admits(ae_title, address) for caller in self.allowed_callers)


class StorageSettings(_Section):
    """Where received instances live, and how duplicates and low disk are handled."""

    root: Path = Field(
        default=Path(".dicom-node/storage"), description="folder of received instances and created objects"
    )
    duplicate_policy: Literal["keep_first", "overwrite"] = Field(
        default="keep_first", description="an instance received again: keep_first keeps the stored file, overwrite replaces it"
    )
    min_free_mb: int = Field(
        default=1024, ge=0, description="refuse C-STORE with 0xA700 below this free space, in MiB"
    )


class DatabaseSettings(_Section):
    """The database that is the hand-off between all stages and processes."""

    url: str = Field(
        default="sqlite:///.dicom-node/dicom-node.db",
        description="sqlite:///PATH or postgresql+psycopg://USER@HOST/NAME; the password best in the environment",
    )
    sqlite_busy_timeout_s: float = Field(
        default=30.0, gt=0, description="seconds a SQLite writer waits for another's lock before failing"
    )
    echo: bool = Field(default=False, description="log every SQL statement (debugging only: very verbose)")

    @model_validator(mode="after")
    def _known_backend(self) -> DatabaseSettings:
        if not self.url.startswith(("sqlite", "postgresql")):
            raise ValueError("url must be a sqlite:/// or postgresql+psycopg:// URL")
        return self


class CompletionSettings(_Section):
    """When a study counts as complete: a quiet period, and a cap for endless streams."""

    quiet_period_s: float = Field(
        default=30.0, gt=0, description="seconds without a new instance after which a study is complete"
    )
    max_open_s: float = Field(
        default=3600.0, gt=0, description="seconds after it opened that a study is complete, even if still busy"
    )
    scan_interval_s: float = Field(default=5.0, gt=0, description="seconds between two looks for complete studies")

    @model_validator(mode="after")
    def _cap_after_quiet(self) -> CompletionSettings:
        if self.max_open_s < self.quiet_period_s:
            raise ValueError("max_open_s must not be shorter than quiet_period_s")
        return self


class TLSSettings(_Section):
    """DICOM TLS (PS3.15 Annex B) for the listener; destinations opt in one by one."""

    enabled: bool = Field(default=False, description="the listener speaks DICOM TLS (certificate and private_key needed)")
    certificate: Path | None = Field(default=None, description="PEM file of our certificate (and its chain)")
    private_key: Path | None = Field(default=None, description="PEM file of the certificate's private key")
    private_key_password: SecretStr | None = Field(
        default=None, description="password of the private key, if encrypted; best set in the environment"
    )
    ca_bundle: Path | None = Field(
        default=None, description="PEM file of the CAs whose certificates we trust (callers' and destinations')"
    )
    require_client_certificate: bool = Field(
        default=False, description="refuse callers without a certificate signed by ca_bundle"
    )

    @model_validator(mode="after")
    def _files_present(self) -> TLSSettings:
        if not self.enabled:
            return self
        problems = []
        for name in ("certificate", "private_key"):
            path = getattr(self, name)
            if path is None:
                problems.append(f"{name} is required when TLS is enabled")
            elif not path.is_file():
                problems.append(f"{name} {str(path)!r} is not a readable file")
        if self.require_client_certificate and self.ca_bundle is None:
            problems.append("ca_bundle is required to check client certificates")
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            problems.append(f"ca_bundle {str(self.ca_bundle)!r} is not a readable file")
        if problems:
            raise ValueError("; ".join(problems))
        return self


#: A kind of result object, as named in ``[[destinations]] objects`` (the rows of the objects
#: themselves are :class:`dicom_node.db.models.OutputObject`).
OutputKind = Literal["seg", "sr", "key_images"]


class Destination(_Section):
    """A peer we send results to with C-STORE."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = Field(
        description="our name for it in commands and `status` (letters, digits, _ . -)"
    )
    ae_title: AETitle = Field(description="its AE title, called by ours")
    host: str = Field(description="its host name or IP address")
    port: Port = Field(description="its DICOM TCP port")
    tls: bool = Field(default=False, description="send to it over DICOM TLS (trusting tls.ca_bundle)")
    objects: list[OutputKind] = Field(
        default_factory=lambda: ["seg", "sr", "key_images"], description="which of our objects it receives"
    )


class SelectionSettings(_Section):
    """Which series of a study go to the models, each rule recorded as a reason."""

    modalities: list[str] = Field(default_factory=lambda: ["CT"], description="Modality values of series analysed")
    required_image_type: list[str] = Field(
        default_factory=lambda: ["ORIGINAL"],
        description="values that must all appear in ImageType",
    )
    rejected_image_type: list[str] = Field(
        default_factory=lambda: ["LOCALIZER", "SCOUT"],
        description="values that exclude a series when present in ImageType",
    )
    min_slice_thickness_mm: float = Field(default=0.4, ge=0, description="thinner series are not chosen, in mm")
    max_slice_thickness_mm: float = Field(default=6.0, gt=0, description="thicker series are not chosen, in mm")
    min_slices: int = Field(default=1, ge=1, description="series with fewer instances are not chosen")
    min_coverage_mm: float = Field(
        default=60.0,
        ge=0,
        description="a chosen series covering less along the head's axis is skipped as too small to analyse "
        "(a stray slice, a partial scan); a head is about 150 mm",
    )
    head_regex: Regex = Field(
        default=r"(?i)\b(head|brain|skull|cranial|cranium|neuro|kopf|cerebr\w*|ich)\b",
        description="a header matching this (regular expression) names the head",
    )
    not_head_regex: Regex = Field(
        default=(
            r"(?i)\b(chest|thorax|thoracic|lung\w*|abdomen|abd|pelvis|spine|lumbar|cervical|neck|cardiac|heart"
            r"|coronary|extremit\w*|knee|hip|shoulder|ankle|foot|hand|wrist|elbow|leg|arm|breast|liver|kidney"
            r"|renal|colon|sinus\w*|dental|face|facial|maxillofacial|whole ?body|torso)\b"
        ),
        description="a header naming one of these body parts (and not the head) means the series is not a head",
    )
    head_check: Literal["header", "image", "header-or-image"] = Field(
        default="header-or-image",
        description=(
            "header: the head must be named in BodyPartExamined, StudyDescription or SeriesDescription; "
            "image: decided from the pixels (a skull ring on enough slices, a head's z extent); "
            "header-or-image: the header decides when it names a body part, the image when it names none"
        ),
    )
    soft_tissue_kernel_regex: Regex = Field(
        default=r"(?i)(soft|standard|brain|\bH[0-4]\d|\bJ[0-4]\d|\bFC[0-4]\d|UB|^B$|\bB[0-4]\d|\bQr[0-4]\d)",
        description="ConvolutionKernel values of a soft-tissue reconstruction (preferred), as a regular expression",
    )
    bone_kernel_regex: Regex = Field(
        default=r"(?i)(bone|sharp|lung|edge|\bH[6-9]\d|\bJ[6-9]\d|\bB[6-9]\d|\bQr[6-9]\d|\bYC|\bFC[3-9][0-9])",
        description="ConvolutionKernel values of a bone or sharp reconstruction (avoided), as a regular expression",
    )

    @model_validator(mode="after")
    def _range(self) -> SelectionSettings:
        if self.min_slice_thickness_mm > self.max_slice_thickness_mm:
            raise ValueError("min_slice_thickness_mm must not exceed max_slice_thickness_mm")
        return self


class IdentitySettings(_Section):
    """How we name ourselves in the objects we create."""

    uid_root: Annotated[str, AfterValidator(_check_uid_root)] = Field(
        default="1.2.826.0.1.3680043.10.1476",
        description="UID root for every UID the node creates; replace with your organisation's",
    )
    manufacturer: str = Field(default="dicom-node project", description="Manufacturer in the objects we create")
    manufacturer_model_name: str = Field(
        default="dicom-node", description="Manufacturer's Model Name in the objects we create"
    )
    device_serial_number: str = Field(
        default="dicom-node-1", min_length=1, max_length=64,
        description="names this installation in the objects it creates (Type 1 in the SEG)",
    )
    institution_name: str | None = Field(
        default=None, description="Institution Name in the objects we create; absent: not written"
    )


class RetrySettings(_Section):
    """Exponential backoff with a cap, then a dead letter that keeps the reason."""

    max_attempts: int = Field(default=3, ge=1, le=1000, description="tries in all before it is given up (dead)")
    initial_delay_s: float = Field(default=30.0, ge=0, description="seconds before the first retry")
    backoff_factor: float = Field(default=2.0, ge=1.0, description="each further wait is this many times the last")
    max_delay_s: float = Field(default=900.0, ge=0, description="the longest wait between two tries, in seconds")


class JobSettings(_Section):
    """Analysis jobs: how workers claim them and how failures are retried."""

    lease_s: float = Field(
        default=600.0, gt=0, description="seconds: a job whose worker has not renewed it for this long is reclaimed"
    )
    heartbeat_s: float = Field(default=30.0, gt=0, description="seconds between a worker's renewals of its job's lease")
    dispatch_interval_s: float = Field(default=2.0, gt=0, description="seconds between a worker's looks for queued jobs")
    retry: RetrySettings = Field(default_factory=RetrySettings, description="how a failed job is tried again")

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> JobSettings:
        if self.heartbeat_s >= self.lease_s:
            raise ValueError("heartbeat_s must be shorter than lease_s")
        return self


class DeliverySettings(_Section):
    """The outbox: how often it is served and how failed sends are retried."""

    interval_s: float = Field(default=5.0, gt=0, description="seconds between two looks for deliveries due")
    timeout_s: float = Field(default=60.0, gt=0, description="seconds to wait for a destination's answer (C-STORE)")
    retry: RetrySettings = Field(
        default_factory=lambda: RetrySettings(max_attempts=20, initial_delay_s=30, max_delay_s=3600),
        description="how a failed send is tried again",
    )


class GateSettings(_Section):
    """Where a finding may lie and how dense it may be (``dicom_node.models.gating``).

    The defaults are what every figure in the README was measured with; change them only
    with a reason a radiologist agrees to, and measure again (``dicom-node evaluate --gate``).
    """

    margin_mm: float = Field(
        default=4.0, ge=0, le=20,
        description="mm the intracranial space is grown in-plane, so that a bleed on the inner table stays in",
    )
    min_inside_fraction: float = Field(
        default=0.5, gt=0, le=1, description="share of a finding's voxels that must lie inside, else it is dropped"
    )
    density_rule: bool = Field(
        default=True,
        description="drop a finding whose median HU is above max_blood_hu (an enhanced sinus, a calcification)",
    )
    max_blood_hu: float = Field(
        default=100.0, ge=40, le=300, description="the highest median HU of a finding that can still be blood"
    )


class AnalysisSettings(_Section):
    """Which model analyses complete studies, and on which device.

    ``model`` names the pipeline: ``classifier+unet`` (the default: the U-Net draws the
    lesions; with ``combination = "both"`` a study is positive only when the classifier
    says so and the U-Net keeps a lesion), ``classifier+maskrcnn``, one trained kind
    alone, or ``threshold`` (the HU baseline, no weights, no torch). The model directories
    default to the weights shipped in ``dicom_node/models/weights``.
    """

    model: Literal["classifier+unet", "classifier+maskrcnn", "unet", "maskrcnn", "threshold"] = Field(
        default="classifier+unet", description="the pipeline that analyses a study (see the section's text)"
    )
    combination: Literal["gate", "either", "both"] = Field(
        default="both",
        description="gate: lesions only when the classifier calls the study positive; either: positive when "
        "either model is; both: positive only when the classifier is and a lesion is kept",
    )
    classifier_dir: Path | None = Field(default=None, description="folder of the classifier's weights; absent: the shipped ones")
    unet_dir: Path | None = Field(default=None, description="folder of the U-Net's weights; absent: the shipped ones")
    maskrcnn_dir: Path | None = Field(default=None, description="folder of the Mask R-CNN's weights; absent: the shipped ones")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="where the model runs; auto: a CUDA GPU when there is one, else the CPU"
    )
    batch_size: int = Field(default=16, ge=1, le=1024, description="slices per model call (more: faster, more memory)")
    min_lesion_ml: float = Field(default=0.1, ge=0, description="smallest lesion the threshold model reports, in mL")
    gate: GateSettings = Field(
        default_factory=GateSettings, description="which findings are kept: inside the skull and no denser than blood"
    )


SeriesDescription = Annotated[str, Field(min_length=1, max_length=64)]
SeriesNumber = Annotated[int, Field(ge=1, le=2**31 - 1)]


class OutputSettings(_Section):
    """Series numbers and descriptions of the objects we create, and the negative-study choice."""

    seg_series_number: SeriesNumber = Field(default=9001, description="Series Number of the SEG we create")
    seg_series_description: SeriesDescription = Field(
        default="AI ICH SEGMENTATION - RESEARCH USE ONLY", description="Series Description of the SEG (at most 64 characters)"
    )
    sr_series_number: SeriesNumber = Field(default=9002, description="Series Number of the SR we create")
    sr_series_description: SeriesDescription = Field(
        default="AI ICH REPORT - RESEARCH USE ONLY", description="Series Description of the SR (at most 64 characters)"
    )
    key_images_series_number: SeriesNumber = Field(default=9003, description="Series Number of the key images")
    key_images_series_description: SeriesDescription = Field(
        default="AI ICH KEY IMAGES - RESEARCH USE ONLY", description="Series Description of the key images (at most 64 characters)"
    )
    send_empty_seg: bool = Field(
        default=False,
        description="send a SEG with an empty segment for a negative study (the SR always states the result)",
    )


class ObservabilitySettings(_Section):
    """The Prometheus /metrics and /health endpoints and the status page of each process (loopback by default)."""

    enabled: bool = Field(default=True, description="serve /metrics, /health and the status page over HTTP")
    bind_address: str = Field(
        default="127.0.0.1", description="IP address of the HTTP endpoints; loopback keeps them off the network"
    )
    port: Port = Field(default=9110, description="TCP port of the HTTP endpoints for `run` and `scp`")
    worker_port: Port = Field(default=9111, description="TCP port of the HTTP endpoints for `worker`, which may run beside `scp`")
    status_page: bool = Field(default=True, description="serve the read-only status page at / beside /metrics")
    viewer_url: str | None = Field(
        default=None,
        description="link each study on the status page to a viewer, e.g. "
        "http://viewer.example/viewer?StudyInstanceUIDs={study_uid}",
    )

    def page_url(self, port: int | None = None) -> str | None:
        """The status page's address on ``port`` (default: :attr:`port`, that of `run` and `scp`); None when off."""
        if not (self.enabled and self.status_page):
            return None
        return f"http://{self.bind_address}:{self.port if port is None else port}/"

    @model_validator(mode="after")
    def _viewer_template(self) -> ObservabilitySettings:
        if self.viewer_url is not None:
            if "{study_uid}" not in self.viewer_url:
                raise ValueError("viewer_url must contain {study_uid}, where the study's UID goes")
            if not self.viewer_url.startswith(("http://", "https://")):
                raise ValueError("viewer_url must be an http:// or https:// URL")
        return self


class RetentionSettings(_Section):
    """Delete received instances and produced objects some days after delivery, never before."""

    enabled: bool = Field(default=False, description="delete old files at all; false keeps everything")
    # At most 100 years: datetime arithmetic overflows far beyond that ("never" is enabled = false).
    received_days: float = Field(
        default=7.0, ge=0, le=36500, description="days after delivery that a study's received instances are deleted"
    )
    results_days: float = Field(
        default=7.0, ge=0, le=36500, description="days after delivery that the objects we created are deleted"
    )
    interval_s: float = Field(default=3600.0, gt=0, description="seconds between two retention runs")


class AuditSettings(_Section):
    """The audit trail: always the ``audit_event`` table, plus this JSON-lines file if set."""

    file: Path | None = Field(
        default=Path(".dicom-node/audit.log"), description="JSON-lines copy of the audit trail; absent: the table only"
    )


class LoggingSettings(_Section):
    """Log level and format; logs carry UIDs, never patient names or IDs."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="the least severe level logged")
    format: Literal["json", "text"] = Field(
        default="json", description="json: one object a line (for journald and collectors); text: for reading"
    )


class Settings(BaseSettings):
    """All settings of one dicom-node installation."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    node: NodeSettings = Field(default_factory=lambda: NodeSettings(allow_any_caller=True))
    storage: StorageSettings = Field(default_factory=StorageSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)
    tls: TLSSettings = Field(default_factory=TLSSettings)
    destinations: list[Destination] = Field(
        default_factory=list,
        description="peers the results are sent to: [[destinations]] tables of name, ae_title, host, port, tls, objects",
    )
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @model_validator(mode="after")
    def _unique_destinations(self) -> Settings:
        names = [d.name for d in self.destinations]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"destination names must be unique: {', '.join(duplicated)}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (passed as init values): secrets and the
        # DB URL are set by the service manager's environment file.
        return (env_settings, init_settings)


def _format_location(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the section holding ``loc``'s last key accepts (empty when it cannot be told)."""
    model: Any = Settings
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        field = getattr(model, "model_fields", {}).get(item)
        if field is None:
            return []
        annotation = field.annotation
        # list[Destination] and Destination | None: look through to the section class
        for inner in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                model = inner
                break
        else:
            return []
    return list(getattr(model, "model_fields", {}))


def _unknown_key_message(loc: tuple[Any, ...]) -> str:
    """'unknown key', with the closest accepted key of that section when one is close enough."""
    if not loc or not isinstance(loc[-1], str):
        return "unknown key"
    close = difflib.get_close_matches(loc[-1], _known_keys(loc), n=1, cutoff=0.6)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def environment_keys(environ: Mapping[str, str]) -> dict[str, str]:
    """Dotted key -> variable name for every ``DICOM_NODE_<SECTION>[__<KEY>]`` variable of a settings section.

    ``DICOM_NODE_CONFIG`` names the file, and other ``DICOM_NODE_*`` variables without a
    section (a test's knobs, say) are not settings at all.
    """
    found = {}
    for name in environ:
        key = _dotted_key(name)
        if key is not None and key.split(".", 1)[0] in Settings.model_fields:
            found[key] = name
    return found


def _dotted_key(name: str) -> str | None:
    """``DICOM_NODE_NODE__PORT`` -> ``node.port``; None for a variable that is not ``DICOM_NODE_*``
    or is ``DICOM_NODE_CONFIG`` (the file's name, not a setting)."""
    if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
        return None
    return name[len(ENV_PREFIX) :].lower().replace("__", ".")


def _variable_for(loc: tuple[Any, ...], variables: Mapping[str, str]) -> str | None:
    """The environment variable that set the key at ``loc`` (or its whole section), if one did."""
    parts = [str(item) for item in loc if not isinstance(item, int)]
    for depth in range(len(parts), 0, -1):
        name = variables.get(".".join(parts[:depth]))
        if name is not None:
            return name
    return None


def unknown_section_variables(environ: Mapping[str, str]) -> list[str]:
    """A problem line for each ``DICOM_NODE_<SECTION>__<KEY>`` whose section does not exist.

    pydantic-settings ignores such a variable, so a typo in a section name
    (``DICOM_NODE_NODEE__PORT``) would silently change nothing.
    """
    problems = []
    for name in sorted(environ):
        key = _dotted_key(name)
        if key is None or "." not in key:
            continue
        section = key.split(".", 1)[0]
        if section in Settings.model_fields:
            continue
        close = difflib.get_close_matches(section, list(Settings.model_fields), n=1, cutoff=0.6)
        guess = f" (did you mean DICOM_NODE_{close[0].upper()}__...?)" if close else ""
        problems.append(f"environment variable {name}: no settings section {section!r}{guess}")
    return problems


def variables_named(problems: list[str], environ: Mapping[str, str]) -> list[str]:
    """The set environment variables the problem lines name (a bad value, or a section that does not exist)."""
    named = {match for line in problems for match in re.findall(rf"\b{ENV_PREFIX}\w+", line)}
    return sorted(name for name in named if name in environ)


def validation_problems(exc: ValidationError, environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per problem, each starting with the dotted key it concerns (and the variable that set it)."""
    variables = environment_keys(os.environ if environ is None else environ)
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = _unknown_key_message(tuple(error["loc"]))
        where = _format_location(error["loc"])
        variable = _variable_for(tuple(error["loc"]), variables)
        if variable is not None:
            where += f" (environment variable {variable})"
        problems.append(f"{where}: {message}")
    return problems


#: Settings that name a file or folder, as (section, key).
PATH_KEYS = (
    ("storage", "root"),
    ("audit", "file"),
    ("tls", "certificate"),
    ("tls", "private_key"),
    ("tls", "ca_bundle"),
    ("analysis", "classifier_dir"),
    ("analysis", "unet_dir"),
    ("analysis", "maskrcnn_dir"),
)
DATABASE_URL_KEY = ("database", "url")


def _anchored_path(value: Any, base: Path) -> Any:
    if isinstance(value, (str, Path)) and str(value) and not Path(value).is_absolute():
        return os.path.normpath(base / value)
    return value


def anchored_url(url: str, base: Path) -> str:
    """A SQLite URL with a relative file path made absolute under ``base``; any other URL as it is."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # not a URL at all: the [database] validator says so
        return url
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return url
    if Path(database).is_absolute():
        return url
    return parsed.set(database=os.path.normpath(base / database)).render_as_string(hide_password=False)


def _anchor(section: str, key: str, value: Any, base: Path) -> Any:
    if (section, key) == DATABASE_URL_KEY:
        return anchored_url(value, base) if isinstance(value, str) else value
    return _anchored_path(value, base)


def _anchor_file_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """``raw`` with every relative path it gives made relative to ``base`` (the file's folder)."""
    anchored = dict(raw)
    for section, key in (*PATH_KEYS, DATABASE_URL_KEY):
        table = raw.get(section)
        if isinstance(table, dict) and key in table:
            anchored[section] = {**anchored.get(section, table), key: _anchor(section, key, table[key], base)}
    return anchored


def _anchor_remaining(settings: Settings, base: Path, variables: Mapping[str, str]) -> Settings:
    """Make the paths still relative (defaults: to ``base``; environment values: to the working directory) absolute."""
    updates: dict[str, dict[str, Any]] = {}
    for section, key in (*PATH_KEYS, DATABASE_URL_KEY):
        value = getattr(getattr(settings, section), key)
        from_environment = _variable_for((section, key), variables) is not None
        anchored = _anchor(section, key, value, Path.cwd() if from_environment else base)
        if str(anchored) != str(value):
            updates.setdefault(section, {})[key] = Path(anchored) if isinstance(value, Path) else anchored
    if not updates:
        return settings
    return settings.model_copy(
        update={section: getattr(settings, section).model_copy(update=values) for section, values in updates.items()}
    )


def _config_hint(path: Path) -> str:
    """What to do when the settings file is not where we looked (a relative default, say)."""
    where = path if path.is_absolute() else f"{path} in {Path.cwd()}"
    return (
        f"; looked for {where}: give the file with --config PATH "
        f"or set {CONFIG_ENV}=PATH (e.g. /etc/dicom-node/dicom-node.toml)"
    )


def load_settings(path: Path | str) -> Settings:
    """Read, validate and return the settings in ``path`` (plus environment overrides).

    Relative paths come back absolute: those of the file and the defaults under the
    file's folder, those of the environment under the working directory.
    Raises :class:`ConfigError` listing every problem at once.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}{_config_hint(path)}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    base = path.resolve().parent
    environ = dict(os.environ)
    try:
        settings = Settings(**_anchor_file_paths(raw, base))
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, environ) + unknown_section_variables(environ)) from exc
    if problems := unknown_section_variables(environ):
        raise ConfigError(problems)
    return _anchor_remaining(settings, base, environment_keys(environ))
