"""The DICOM Conformance Statement (PS3.2) of a configured node, rendered as Markdown.

A statement written by hand drifts from the server it describes. This one is rendered
from what the node runs on, so that the two cannot disagree:

* the presentation contexts from the one table in :mod:`dicom_node.dicom.contexts`
  (the listener's supported contexts come from it too);
* the C-STORE statuses, the association rejections and the warning statuses the sender
  accepts from the one status table in :mod:`dicom_node.dicom.statuses` (which the
  listener and the sender use, and which is built on pynetdicom's);
* the implementation class UID, version name and default PDU size from pynetdicom, read
  at run time, so that upgrading pynetdicom changes the statement;
* AE title, port, callers, timeouts, TLS, destinations and output series from the settings.

The prose describes what is not configurable (the outline of the objects we create, the
order of the stages). ``config/conformance-statement.md`` is the copy rendered from the
example configuration; ``tests/unit/test_conformance.py`` fails when it is stale.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from pynetdicom import AE

from dicom_node import __version__
from dicom_node.config import OutputKind, RetrySettings, Settings
from dicom_node.dicom.contexts import (
    ACCEPTED_TRANSFER_SYNTAXES,
    STORAGE_CLASSES,
    VERIFICATION_CLASS,
    VERIFICATION_TRANSFER_SYNTAXES,
    Role,
)
from dicom_node.dicom.statuses import (
    OUT_OF_RESOURCES,
    REJECT_CALLED_AE,
    REJECT_CALLING_AE,
    REJECT_LIMIT,
    STORE_REFUSALS,
    SUCCESS,
    named_storage_warnings,
)
from dicom_node.send.scu import proposed_transfer_syntaxes


@dataclass(frozen=True)
class CreatedObject:
    """An object kind the node creates and sends: its SOP class and configured series."""

    kind: OutputKind  # as named in [[destinations]] objects
    name: str
    sop_class_uid: UID
    series_number: int
    series_description: str


def _retention_text(settings: Settings) -> str:
    retention = settings.retention
    if not retention.enabled:
        return "Retention is off (*configured*): instances stay until an administrator removes them."
    return (
        f"Instances are deleted {retention.received_days:g} day(s) after the study's results were all "
        "delivered, never before (*configured*)."
    )


def created_objects(settings: Settings) -> list[CreatedObject]:
    """The objects the node creates, which are all its Storage SCU ever sends.

    The SOP class of each kind is fixed by its builder in :mod:`dicom_node.outputs`. Each
    must be an OUTPUT row of the contexts table, or ``RuntimeError`` is raised: the
    statement must never describe an object the table does not know.
    """
    outputs = settings.outputs
    created = [
        CreatedObject(
            "key_images",
            "Key images",
            SecondaryCaptureImageStorage,
            outputs.key_images_series_number,
            outputs.key_images_series_description,
        ),
        CreatedObject(
            "seg", "Segmentation", SegmentationStorage, outputs.seg_series_number, outputs.seg_series_description
        ),
        CreatedObject(
            "sr", "Measurement report", Comprehensive3DSRStorage, outputs.sr_series_number, outputs.sr_series_description
        ),
    ]
    outputs_in_table = {row.uid for row in STORAGE_CLASSES if row.role is Role.OUTPUT}
    if {obj.sop_class_uid for obj in created} != outputs_in_table:
        raise RuntimeError("the objects created and the OUTPUT rows of the contexts table differ")
    return created


def created_transfer_syntax() -> UID:
    """The transfer syntax of the objects the node creates, hence the one its SCU proposes.

    The table orders the accepted syntaxes by preference; the node writes what it creates
    in the first (uncompressed, which every viewer decodes).
    """
    return ACCEPTED_TRANSFER_SYNTAXES[0]


def _uid_name(uid: str) -> str:
    """The standard's name of a UID, as pydicom's UID dictionary spells it."""
    return UID(uid).name


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _retry(policy: RetrySettings) -> str:
    return (
        f"{policy.max_attempts} attempts; waits {_seconds(policy.initial_delay_s)}, "
        f"x{policy.backoff_factor:g} after each failure, at most {_seconds(policy.max_delay_s)}"
    )


def _rejection(rsd: tuple[int, ...]) -> str:
    return "(result {}, source {}, reason {})".format(*rsd)


def _cell(value: object) -> str:
    """A Markdown table cell: pipes escaped, newlines folded."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _github_anchor(title: str) -> str:
    """The anchor GitHub gives a Markdown heading, for the table of contents."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


@dataclass
class _Document:
    """Markdown with sections numbered like PS3.2's outline, and their table of contents."""

    lines: list[str] = field(default_factory=list)
    headings: list[tuple[int, str]] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)

    def section(self, level: int, title: str) -> None:
        """A heading at ``level`` (1 = chapter, rendered as ``##``), numbered 4.2.1.3 style."""
        del self.numbers[level:]
        self.numbers += [0] * (level - len(self.numbers))
        self.numbers[level - 1] += 1
        numbered = ".".join(map(str, self.numbers)) + " " + title
        self.headings.append((level, numbered))
        self.lines += ["#" * (level + 1) + " " + numbered, ""]

    def text(self, *paragraphs: str) -> None:
        for paragraph in paragraphs:
            self.lines += [paragraph, ""]

    def bullets(self, items: Iterable[str]) -> None:
        self.lines += [f"- {item}" for item in items]
        self.lines.append("")

    def table(self, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        self.lines += ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        self.lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
        self.lines.append("")

    def contents(self) -> list[str]:
        return ["  " * (level - 1) + f"- [{title}](#{_github_anchor(title)})" for level, title in self.headings]


def _overview(doc: _Document, settings: Settings) -> None:
    sent = {obj.sop_class_uid for obj in created_objects(settings)}
    doc.section(1, "Conformance Statement Overview")
    doc.text(
        f"dicom-node {__version__} is a DICOM AI node for head CT. A PACS or modality sends it "
        f"CT studies with C-STORE (AE title `{settings.node.ae_title}`); it stores every instance "
        "as received, waits until a study is complete, analyses it for intracranial hemorrhage "
        "and sends the results with C-STORE: a Segmentation, a Comprehensive 3D SR (TID 1500 "
        "measurement report) and Secondary Capture key images.",
        "**Research use only.** The results are not for diagnostic use; every object the node "
        "creates says so (Content Qualification RESEARCH, a disclaimer in its text and, on key "
        "images, in its pixels).",
        "The node offers no query/retrieve, worklist, MPPS, storage commitment or media services.",
    )
    rows = [(_uid_name(row.uid), "Yes" if row.uid in sent else "No", "Yes") for row in STORAGE_CLASSES]
    rows.append((_uid_name(VERIFICATION_CLASS), "Yes (`dicom-node echo`)", "Yes"))
    doc.table(("SOP Class", "User of Service (SCU)", "Provider of Service (SCP)"), rows)


def _introduction(doc: _Document) -> None:
    doc.section(1, "Introduction")
    doc.section(2, "Revision History")
    doc.table(
        ("Document version", "Product version", "Notes"),
        [(__version__, f"dicom-node {__version__}", "rendered by `dicom-node conformance` from the configuration")],
    )
    doc.section(2, "Audience and Remarks")
    doc.text(
        "For PACS administrators and integrators connecting dicom-node to their systems. Values "
        "marked *configured* come from the settings file this statement was rendered with; render "
        "the statement of an installation with "
        "`dicom-node conformance --config /etc/dicom-node/dicom-node.toml`.",
        "dicom-node is research software. It is not a medical device and its results must not be "
        "used for diagnosis.",
    )
    doc.section(2, "References")
    doc.bullets(
        [
            "DICOM PS3.2 (Conformance), PS3.3 (Information Object Definitions), PS3.4 (Service "
            "Class Specifications), PS3.7 (Message Exchange), PS3.8 (Network Communication "
            "Support), PS3.15 (Security Profiles), PS3.16 (Content Mapping Resource)",
            "pynetdicom (network), pydicom and highdicom (encoding and object creation)",
        ]
    )


def _implementation_model(doc: _Document, settings: Settings) -> None:
    ae = settings.node.ae_title
    completion = settings.completion
    doc.section(2, "Implementation Model")
    doc.section(3, "Application Data Flow")
    doc.lines += [
        "```",
        f"remote Storage SCU  --C-STORE-->  [{ae}: Storage SCP]  --> storage + database",
        f"remote Verif. SCU   --C-ECHO--->  [{ae}: Verification SCP]",
        "                                          |",
        "                     study complete (quiet period) --> analysis job (worker)",
        "                                          |",
        f"destination SCP     <--C-STORE--  [{ae}: Storage SCU]  <-- SEG, SR, key images",
        "```",
        "",
    ]
    doc.text(
        f"One application entity, `{ae}`, plays every role. As Storage SCP it receives CT images "
        "(and accepts the object types it creates). A study is complete after "
        f"{_seconds(completion.quiet_period_s)} without a new instance, or "
        f"{_seconds(completion.max_open_s)} after its first instance even if instances keep "
        "arriving (*configured*). The complete study is queued for analysis; its results are "
        "queued for each configured destination and sent by the Storage SCU."
    )
    doc.section(3, "Functional Definition of AEs")
    doc.text(
        f"`{ae}` listens on the configured address and port and accepts the presentation contexts "
        "of section 4.2.1.4 from the callers of section 4.4.1. Each received instance is written "
        "as it arrives to a temporary file beside the storage, checked, fsynced, linked or renamed "
        "into place under a path built from its UIDs only and recorded in the database; only then "
        "is success returned. Nothing is "
        "analysed while an association is open, and the end of an association is not taken as "
        "the end of a study.",
        f"As Storage SCU, `{ae}` opens one association per destination and delivery round, "
        "proposes one presentation context per SOP class of the objects it sends, and records "
        "the status returned for every object.",
    )
    doc.section(3, "Sequencing of Real-World Activities")
    doc.bullets(
        [
            "Receive: C-STORE of a study's instances, over one or several associations.",
            "Complete: the study is complete after the quiet period. An instance that arrives "
            "later reopens it, and the study is analysed again.",
            "Analyse: a worker selects the series to analyse (axial head CT) and runs the model.",
            "Send: the created objects are sent to each destination that wants them; a failed "
            "send is retried later without delaying other destinations. Sending results again "
            "(`dicom-node resend`) reuses their SOP Instance UIDs.",
        ]
    )


def _sop_classes(doc: _Document, settings: Settings) -> None:
    sent = {obj.sop_class_uid for obj in created_objects(settings)}
    doc.section(4, "SOP Classes")
    rows = [
        (_uid_name(row.uid), row.uid, "Yes" if row.uid in sent else "No", "Yes", row.purpose)
        for row in STORAGE_CLASSES
    ]
    rows.append((_uid_name(VERIFICATION_CLASS), VERIFICATION_CLASS, "Yes", "Yes", "connectivity check"))
    doc.table(("SOP Class Name", "SOP Class UID", "SCU", "SCP", "Use"), rows)


def _association_policies(doc: _Document, settings: Settings) -> None:
    node = settings.node
    defaults = AE()  # what the node's AEs present: it changes none of these
    doc.section(4, "Association Policies")
    doc.section(5, "General")
    received = f"{node.max_pdu_size} bytes" if node.max_pdu_size else "unlimited"
    doc.text(
        "The DICOM Application Context Name is `1.2.840.10008.3.1.1.1`. The largest P-DATA PDU "
        f"the node receives is {received} as SCP (*configured*) and {defaults.maximum_pdu_size} "
        "bytes as SCU; it sends PDUs no larger than the peer's maximum."
    )
    doc.section(5, "Number of Associations")
    doc.text(
        f"As SCP, {node.listener_processes} listener process(es) (*configured*) accept on the same port, "
        f"each at most {node.max_associations} concurrent associations (*configured*), "
        f"{node.listener_processes * node.max_associations} in all; the operating system gives each new "
        "association to one of them. One more than a process's limit "
        "is rejected with A-ASSOCIATE-RJ rejected-transient, service-provider (presentation), "
        f"local-limit-exceeded {_rejection(REJECT_LIMIT)}. As SCU, one association at a time per "
        f"destination ({len(settings.destinations)} configured)."
    )
    doc.section(5, "Asynchronous Nature")
    doc.text("Asynchronous operations are not supported: one operation is outstanding at a time.")
    doc.section(5, "Implementation Identifying Information")
    doc.table(
        ("Item", "Value"),
        [
            ("Implementation Class UID", defaults.implementation_class_uid),
            ("Implementation Version Name", defaults.implementation_version_name),
        ],
    )
    doc.text("These are pynetdicom's; the node does not replace them.")


def _initiation(doc: _Document, settings: Settings) -> None:
    syntax = created_transfer_syntax()
    delivery = settings.delivery
    doc.section(4, "Association Initiation Policy")
    doc.section(5, "Activity: Send Results")
    doc.text(
        "**Description and sequencing.** When an analysis succeeds, each created object is "
        "queued for every destination that wants its kind. Every "
        f"{_seconds(delivery.interval_s)} the node opens one association per destination with "
        f"objects due, calling AE title `{settings.node.ae_title}`, and sends them one at a time. "
        f"ACSE, DIMSE and network timeouts are {_seconds(delivery.timeout_s)}. A failed object is "
        f"retried ({_retry(delivery.retry)}), then kept as dead and shown by "
        "`dicom-node jobs show` (all *configured*).",
        "**Proposed presentation contexts.**",
    )
    proposals = proposed_transfer_syntaxes(syntax)
    doc.table(
        ("Abstract Syntax", "Abstract Syntax UID", "Transfer Syntax", "Transfer Syntax UID", "Role", "Ext. Neg."),
        [
            (_uid_name(obj.sop_class_uid), obj.sop_class_uid, _uid_name(ts), ts, "SCU", "None")
            for obj in created_objects(settings)
            for ts in proposals
        ],
    )
    doc.text(
        "Only the SOP classes of the objects in the association are proposed. The node creates "
        f"its objects in {_uid_name(syntax)} and proposes "
        f"{', '.join(_uid_name(ts) for ts in proposals)} for each: a peer that accepts only the "
        "default Implicit VR Little Endian receives the same data set re-encoded, nothing else "
        "changes.",
        "**SOP specific conformance (Storage SCU).** An object counts as sent only when the "
        "destination returns a success or warning status for it:",
    )
    warnings = ", ".join(f"0x{code:04X}" for code in named_storage_warnings()) + " and any other warning"
    doc.table(
        ("Status", "Meaning", "Behaviour"),
        [
            (f"0x{SUCCESS:04X}", "Success", "recorded as sent"),
            (warnings, "Warning", "recorded as sent, the warning kept"),
            ("any other", "Refused or Error", "recorded as failed, retried"),
            ("none", "association rejected or aborted, context refused, no response", "failed, retried"),
        ],
    )
    echo = AE()  # as `dicom-node echo` builds it: pynetdicom's default transfer syntaxes
    echo.add_requested_context(VERIFICATION_CLASS)
    doc.section(5, "Activity: Verify a Peer")
    doc.text(
        "`dicom-node echo AE@HOST:PORT` sends one C-ECHO and exits 0 on success. It proposes "
        "Verification with "
        + ", ".join(_uid_name(ts) for ts in echo.requested_contexts[0].transfer_syntax)
        + "; its calling AE title is the command's `--calling-ae` option."
    )


def _acceptance(doc: _Document, settings: Settings) -> None:
    node = settings.node
    doc.section(4, "Association Acceptance Policy")
    doc.section(5, "Activity: Receive Images")
    callers = (
        "from any caller (`node.allow_any_caller`, for testing only)"
        if node.allow_any_caller
        else f"from the {len(node.allowed_callers)} callers of section 4.4.1 only; others are "
        "rejected before negotiation with A-ASSOCIATE-RJ rejected-permanent, service-user, "
        f"calling-AE-title-not-recognized {_rejection(REJECT_CALLING_AE)}, and logged"
    )
    called = (
        f"An association addressed to a called AE title other than `{node.ae_title}` is rejected "
        f"{_rejection(REJECT_CALLED_AE)}."
        if node.require_called_ae_title
        else "Any called AE title is accepted."
    )
    doc.text(
        f"**Description and sequencing.** The node accepts associations {callers}. {called} "
        f"ACSE timeout {_seconds(node.acse_timeout_s)}, DIMSE timeout "
        f"{_seconds(node.dimse_timeout_s)}, network idle timeout {_seconds(node.network_timeout_s)} "
        "(*configured*).",
        "**Accepted presentation contexts.** Each storage SOP class is accepted with any of the "
        "storage transfer syntaxes of the second table. When a caller proposes several in one "
        "presentation context, the node chooses the first in that table's order that the caller "
        "proposed. Other SOP classes and transfer syntaxes are refused (abstract syntax, or "
        "transfer syntaxes, not supported). Only the default roles are accepted (no SCP/SCU Role "
        "Selection) and there is no extended negotiation.",
    )
    rows = [(_uid_name(row.uid), row.uid, "storage transfer syntaxes", "SCP", "None") for row in STORAGE_CLASSES]
    rows.append(
        (
            _uid_name(VERIFICATION_CLASS),
            VERIFICATION_CLASS,
            ", ".join(_uid_name(ts) for ts in VERIFICATION_TRANSFER_SYNTAXES),
            "SCP",
            "None",
        )
    )
    doc.table(("Abstract Syntax", "UID", "Transfer Syntaxes", "Role", "Ext. Neg."), rows)
    doc.table(
        ("Transfer Syntax (storage SOP classes)", "UID"),
        [(_uid_name(ts), ts) for ts in ACCEPTED_TRANSFER_SYNTAXES],
    )
    doc.text(
        "The compressed syntaxes are all lossless, and only syntaxes the node can decode for "
        "analysis are offered: accepting one it cannot read would turn a stored success into a "
        "later, silent analysis failure."
    )
    duplicate = {
        "keep_first": "the first copy is kept and success returned",
        "overwrite": "the new copy replaces the stored one and success is returned",
    }[settings.storage.duplicate_policy]
    doc.text(
        "**SOP specific conformance (Storage SCP).** Level 2 (Full) storage: an instance is kept "
        "exactly as received, every element including private ones, neither transcoded nor "
        "coerced. Digital signatures are kept, not verified. "
        f"{_retention_text(settings)} For a SOP Instance UID "
        f"already stored, {duplicate} (`storage.duplicate_policy = "
        f"\"{settings.storage.duplicate_policy}\"`, *configured*).",
        "Success is returned only after the instance is fsynced, atomically renamed into place "
        "and its database row committed. C-STORE response statuses:",
    )
    rows = [(f"0x{SUCCESS:04X}", "Success", "stored durably and recorded, or a duplicate (see above)")]
    rows += [(f"0x{r.code:04X}", r.service_status, r.description()) for r in STORE_REFUSALS]
    doc.table(("Status", "Service Status", "Further Meaning"), rows)
    doc.text(
        f"0x{OUT_OF_RESOURCES:04X} is returned while free disk space is below "
        f"{settings.storage.min_free_mb} MB (*configured*). Every refusal carries an Error Comment "
        "and leaves nothing stored."
    )
    doc.section(5, "Activity: Answer Verification")
    doc.text("A C-ECHO from an accepted caller is answered with status 0x0000 (Success).")


def _network(doc: _Document) -> None:
    doc.section(2, "Network Interfaces")
    doc.section(3, "Physical Network Interface")
    doc.text(
        "The node uses its host's TCP/IP stack (DICOM Upper Layer over TCP, PS3.8), IPv4 or "
        "IPv6, independent of the physical medium. It sets TCP_NODELAY on the associations it opens."
    )
    doc.section(3, "Additional Protocols")
    doc.text("Destination host names are resolved with the host's resolver (DNS, /etc/hosts).")


def _configuration(doc: _Document, settings: Settings) -> None:
    node = settings.node
    kinds = {obj.kind: _uid_name(obj.sop_class_uid) for obj in created_objects(settings)}
    doc.section(2, "Configuration")
    doc.text(
        "Everything below is set in the node's TOML settings file (`dicom-node config check` "
        "validates it); environment variables `DICOM_NODE_<SECTION>__<KEY>` override it."
    )
    doc.section(3, "AE Title / Presentation Address Mapping")
    doc.text("**Local AE title** (*configured*, `[node]`):")
    doc.table(
        ("Application Entity", "AE Title", "Bind Address", "TCP Port"),
        [("dicom-node", node.ae_title, node.bind_address, node.port)],
    )
    doc.text("**Remote AEs allowed to call** (*configured*, `[[node.allowed_callers]]`):")
    if node.allow_any_caller:
        doc.text("Any caller (`node.allow_any_caller = true`, for testing only).")
    else:
        doc.table(
            ("Calling AE Title", "Host or network"),
            [(caller.ae_title, caller.host or "any host") for caller in node.allowed_callers],
        )
    doc.text("**Destinations** (*configured*, `[[destinations]]`):")
    if settings.destinations:
        doc.table(
            ("Name", "AE Title", "Host", "Port", "TLS", "Objects sent"),
            [
                (d.name, d.ae_title, d.host, d.port, "Yes" if d.tls else "No", ", ".join(kinds[k] for k in d.objects))
                for d in settings.destinations
            ],
        )
    else:
        doc.text("None: results are created but not sent.")
    doc.section(3, "Parameters")
    doc.table(
        ("Parameter", "Value", "Setting"),
        [
            ("Maximum concurrent associations (SCP), per listener process", node.max_associations, "node.max_associations"),
            ("Listener processes sharing the port (SCP)", node.listener_processes, "node.listener_processes"),
            ("ACSE timeout (SCP)", _seconds(node.acse_timeout_s), "node.acse_timeout_s"),
            ("DIMSE timeout (SCP)", _seconds(node.dimse_timeout_s), "node.dimse_timeout_s"),
            ("Network idle timeout (SCP)", _seconds(node.network_timeout_s), "node.network_timeout_s"),
            ("Maximum PDU received (SCP)", node.max_pdu_size or "unlimited", "node.max_pdu_size"),
            (
                "Called AE title must match",
                "Yes" if node.require_called_ae_title else "No",
                "node.require_called_ae_title",
            ),
            ("Duplicate SOP Instance UID", settings.storage.duplicate_policy, "storage.duplicate_policy"),
            ("Refuse C-STORE below free disk (MB)", settings.storage.min_free_mb, "storage.min_free_mb"),
            ("Study quiet period", _seconds(settings.completion.quiet_period_s), "completion.quiet_period_s"),
            ("Study forced completion", _seconds(settings.completion.max_open_s), "completion.max_open_s"),
            ("Delivery interval (SCU)", _seconds(settings.delivery.interval_s), "delivery.interval_s"),
            ("Timeouts (SCU)", _seconds(settings.delivery.timeout_s), "delivery.timeout_s"),
            ("Delivery retries (SCU)", _retry(settings.delivery.retry), "delivery.retry"),
            ("UID root of created objects", settings.identity.uid_root.rstrip("."), "identity.uid_root"),
            ("DICOM TLS on the listener", "Yes" if settings.tls.enabled else "No", "tls.enabled"),
        ],
    )


def _character_sets(doc: _Document, settings: Settings) -> None:
    written = [obj.series_description for obj in created_objects(settings)]
    written += [settings.identity.manufacturer, settings.identity.manufacturer_model_name]
    ascii_only = all(text.isascii() for text in written)
    doc.section(1, "Support of Character Sets")
    doc.text(
        "Received instances are stored unchanged whatever their Specific Character Set "
        "(0008,0005). The text attributes the series selection reads (Series Description, Body "
        "Part Examined, ...) are decoded with pydicom, which supports the single-byte, ISO 2022 "
        "and UTF-8 character sets of PS3.3 C.12.1.1.2. Patient names and IDs are never logged.",
        "The objects the node creates copy the patient and study attributes of their source "
        "images, decoded with the source's character set (an empty or unknown Specific Character "
        "Set is read as the default repertoire). They are written in the default repertoire when "
        "every value is ASCII, else in UTF-8 (ISO_IR 192); the source's own Specific Character "
        "Set is not copied, since an empty or unknown one would make the object invalid. The "
        "text the node writes itself (series descriptions, manufacturer, coded concepts, "
        "captions) "
        + (
            "uses the default repertoire (ISO-IR 6) only."
            if ascii_only
            else "includes configured text outside the default repertoire, so those objects are UTF-8."
        ),
    )


def _security(doc: _Document, settings: Settings) -> None:
    tls = settings.tls
    doc.section(1, "Security")
    doc.section(2, "Security Profiles")
    client = (
        "a client certificate chaining to the configured CA bundle is required (mutual authentication)"
        if tls.require_client_certificate
        else "no client certificate is required"
    )
    doc.text(
        "DICOM TLS on the listener is "
        + ("enabled" if tls.enabled else "disabled in this configuration")
        + " (`tls.enabled`). When enabled, the listener accepts only TLS on its port: TLS 1.2 or "
        "newer with the host OpenSSL's default cipher suites, in the manner of the BCP 195 TLS "
        f"Secure Transport Connection Profile (PS3.15 B.9); {client}. A destination with "
        "`tls = true` is reached over TLS 1.2 or newer, its certificate verified against the CA "
        "bundle (or the system's), the node presenting its own certificate when one is configured.",
    )
    doc.section(2, "Association Level Security")
    doc.text(
        "Only the calling AE titles of section 4.4.1, each optionally restricted to a host or "
        "network, may open an association"
        + (" (not enforced: `node.allow_any_caller = true`)" if settings.node.allow_any_caller else "")
        + ". Rejected associations are logged with the calling AE title and address. There is "
        "no User Identity negotiation."
    )
    doc.section(2, "Application Level Security")
    doc.text(
        "Files are stored under paths built from UIDs only; logs carry UIDs, never patient names "
        "or IDs."
    )


def _annexes(doc: _Document, settings: Settings) -> None:
    doc.section(1, "Annexes")
    _created_instances(doc, settings)
    _segmentation_contents(doc, settings)
    _report_contents(doc)
    _key_image_contents(doc)
    _incomplete_results(doc, settings)
    _private_attributes(doc)


def _created_instances(doc: _Document, settings: Settings) -> None:
    """Where the created objects live, which header values they copy and how, and their series."""
    identity = settings.identity
    doc.section(2, "IOD Contents: Created SOP Instances")
    doc.text(
        "Each object is created in the study of its source images (patient and study attributes "
        "copied), in a new series, with UIDs under the root "
        f"`{identity.uid_root.rstrip('.')}` derived from the analysis, so that sending the same "
        f"results again never creates a duplicate. Manufacturer `{identity.manufacturer}`, "
        f"Manufacturer's Model Name `{identity.manufacturer_model_name}` (*configured*). Each "
        "carries Content Qualification RESEARCH and \"RESEARCH USE ONLY - NOT FOR DIAGNOSTIC "
        "USE\" (Content Description or Image Comments).",
        "Values copied from the source images are checked against their value representation "
        "(PS3.5 6.2) first. Trailing spaces and control characters are removed, SH, LO and PN "
        "values longer than the VR allows are cut to its length, CS values are upper-cased, a DS "
        "is re-formatted to 16 characters; a value whose meaning cannot be kept (a date that is "
        "not YYYYMMDD, a number that is not one) is copied empty, as the standard asks for an "
        "unknown Type 2 value. UIDs are copied exactly as received, even malformed ones, because "
        "they tie the objects to the study. Private attributes are never copied.",
        "A source series without a Frame of Reference UID (common in anonymised exports) is given "
        f"one derived from its Series Instance UID under `{identity.uid_root.rstrip('.')}`: the "
        "SEG's Frame of Reference and its plane positions (those of the source images) refer to it, "
        "and every analysis of that series, of every generation, uses the same one. The source "
        "images' positions are trusted to share one frame, as a single series' positions do.",
    )
    doc.table(
        ("Object", "SOP Class", "Series Number", "Series Description"),
        [
            (obj.name, _uid_name(obj.sop_class_uid), obj.series_number, obj.series_description)
            for obj in created_objects(settings)
        ],
    )


def _segmentation_contents(doc: _Document, settings: Settings) -> None:
    """The SEG as viewers and PACS receive it: binary, frame for frame with the source."""
    empty = "also gets a SEG with an empty segment" if settings.outputs.send_empty_seg else "gets no SEG"
    doc.section(3, "Segmentation")
    doc.bullets(
        [
            "Segmentation Type BINARY, uncompressed. (The Label Map Segmentation SOP class is not "
            "used: common PACS and viewers refuse it.)",
            "One frame per source image and segment, in source order, empty frames included, each "
            "referencing its source image (Derivation Image Sequence).",
            "One segment per lesion with its coded property category and type, and the algorithm "
            "that produced it (Segment Algorithm Type AUTOMATIC, name and version).",
            "Every segment's anatomic region is the brain, so Image Laterality is U (unpaired) and "
            "the General Series has no Laterality.",
            f"A negative study {empty} (`outputs.send_empty_seg`, *configured*); the SR always "
            "states the result.",
        ]
    )


def _report_contents(doc: _Document) -> None:
    """The TID 1500 report: what each container holds, and in which order."""
    doc.section(3, "Comprehensive 3D SR: TID 1500 Measurement Report")
    doc.bullets(
        [
            "Observation context: the node as device observer. Procedure reported: LOINC 25045-6 "
            "\"CT unspecified body region\" (CID 100, which has no head CT code); every group's finding "
            "site is the brain.",
            "Imaging Measurements holds, in the order of the template's rows, one TID 1411 group per "
            "lesion referencing its segment in the SEG, with volume (ml), long axis (mm), mean "
            "attenuation (HU) and the certainty of the finding; then one TID 1501 group per lesion "
            "with its outline on its key slice (SCOORD \"Image Region\", a closed POLYLINE in pixel "
            "coordinates, SELECTED FROM that image), its area there (mm2, INFERRED FROM the same "
            "outline) and a Comment naming it with its volume (\"ICH lesion 1: 3.05 mL\"). Both groups "
            "of a lesion share its Tracking Unique Identifier (its segment's) and its Tracking "
            "Identifier, \"Cornerstone3DTools@^0.1.0:PlanarFreehandROI:\" followed by the segment's "
            "name: free text, chosen so that OHIF 3.13 rebuilds the outline as its own tool and lists "
            "the lesion in its Measurements panel.",
            "A negative study's report has no Imaging Measurements and is titled LOINC 24725-4 "
            "\"CT Head Report\" (CID 7000; TID 1500 takes its title from the extensible CID 7021): it "
            "holds no measurement, and OHIF shows a report titled \"Imaging Measurement Report\" "
            "only through its measurements.",
            "Qualitative Evaluations (TID 1500 row 12) always holds the study-level call "
            "\"Intracranial hemorrhage: present/absent\" (CODE) and the study probability (TEXT, "
            "6 significant digits; this container has no NUM row).",
            "Preliminary Flag PRELIMINARY, Verification Flag UNVERIFIED: no person has signed it. "
            "The source images and the SEG are listed as evidence.",
        ]
    )


def _key_image_contents(doc: _Document) -> None:
    """The key images carry the result in their pixels, for viewers that show no SEG or SR."""
    doc.section(3, "Secondary Capture Key Images")
    doc.bullets(
        [
            "RGB, 8 bits, the source images' matrix size and pixel spacing; Conversion Type WSD; "
            "Burned In Annotation YES.",
            "One image per lesion (its key slice in a brain window, the outline burned in, "
            "measurements in a caption) and one summary image, each with the banner "
            "\"AI RESULT - NOT FOR DIAGNOSTIC USE\" in its pixels.",
        ]
    )


def _incomplete_results(doc: _Document, settings: Settings) -> None:
    """What is sent when one object cannot be built, when a study changes, and when nothing is."""
    doc.section(3, "Incomplete, Replacing and Withheld Results")
    coverage = settings.selection.min_coverage_mm
    doc.bullets(
        [
            "Each object is built on its own. When the source data makes one impossible (e.g. the "
            "SEG), the others are still sent; the SR's study-level group (TID 1501) then holds a "
            "TEXT item (UMLS C0034375 \"Qualitative Evaluations\") per missing object saying "
            "what is missing and why, and lesion groups that would reference the missing SEG are "
            "replaced by their figures in such a text item.",
            "A study that receives new instances after its results were sent is analysed again "
            "as a whole. The new objects are in new series; their Series Description says "
            "\"(replaces ...)\" with the date of the results they replace, and the new SR's "
            "Predecessor Documents Sequence references the earlier SR.",
            "No object is sent for a study that is not for this analysis: no series qualifies "
            "(modality, image type, orientation, body part), or the chosen series covers less "
            f"than {coverage:g} mm (`selection.min_coverage_mm`, *configured*). The job ends "
            "`skipped` with the reason. An SR stating \"not analysed\" would file a report "
            "about the head in the record of whichever patient a stray slice or a non-head "
            "study belongs to.",
        ]
    )


def _private_attributes(doc: _Document) -> None:
    """PS3.2 asks for the data dictionary even when it is empty."""
    doc.section(2, "Data Dictionary of Private Attributes")
    doc.text("The node creates no private attributes.")


def render_conformance_statement(settings: Settings) -> str:
    """The PS3.2 Conformance Statement of a node with ``settings``, as Markdown.

    Deterministic (no dates, nothing from the host), so that the committed copy for the
    example configuration can be compared byte for byte.
    """
    doc = _Document()
    _overview(doc, settings)
    doc.section(1, "Table of Contents")
    contents_at = len(doc.lines)
    _introduction(doc)
    doc.section(1, "Networking")
    _implementation_model(doc, settings)
    doc.section(2, "AE Specifications")
    doc.section(3, f"{settings.node.ae_title} AE Specification")
    _sop_classes(doc, settings)
    _association_policies(doc, settings)
    _initiation(doc, settings)
    _acceptance(doc, settings)
    _network(doc)
    _configuration(doc, settings)
    doc.section(1, "Media Interchange")
    doc.text("Media interchange is not supported.")
    _character_sets(doc, settings)
    _security(doc, settings)
    _annexes(doc, settings)
    doc.lines[contents_at:contents_at] = [*doc.contents(), ""]
    title = [
        f"# DICOM Conformance Statement: dicom-node {__version__}",
        "",
        "**Research use only: not for diagnostic use.**",
        "",
    ]
    return "\n".join(title + doc.lines).rstrip("\n") + "\n"


def write_conformance_statement(settings: Settings, output: Path | None = None) -> str:
    """Render the statement and, when ``output`` is given, write it there. Returns the text.

    The function behind ``dicom-node conformance``. The file is replaced atomically, so a
    reader (or a concurrent check) never sees half a statement.
    """
    text = render_conformance_statement(settings)
    if output is not None:
        partial = output.with_name(output.name + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(output)
    return text
