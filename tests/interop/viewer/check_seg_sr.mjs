// Load our SEG and SR with the parsers OHIF uses, and print what they read as JSON.
//
//   node check_seg_sr.mjs --seg SEG.dcm --sr SR.dcm CT1.dcm CT2.dcm ...
//
// SEG: the path OHIF's cornerstone-dicom-seg extension takes,
//   adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer(referencedImageIds,
//   arrayBuffer, { metadataProvider: core.metaData }).
// It runs in Node without a DOM or WebGL: it parses the SEG with dcmjs, unpacks the
// frames, maps each frame to its source image and fills one labelmap image per source
// image in cornerstone's image cache. The source images' metadata comes from
// @cornerstonejs/metadata (registerDefaultProviders + addDicomPart10Instance, which
// parse the CT files with dcmjs), plus one provider that answers generalImageModule
// with the SOP Instance UID, as OHIF's own MetadataProvider does; without it the
// adapter falls back to matching frames by position.
//
// SR: dcmjs reads and naturalizes the file; the adapter's TID 1500 reader,
// adaptersSR.Cornerstone3D.MeasurementReport.generateToolState, walks it (template
// 1500, Imaging Measurements, Measurement Group, Tracking Identifier / UID). Every group
// comes back through the reader's getToolClass hook with a small adapter that reads its
// NUM, CODE, SCOORD and segment references (no cornerstone drawing tool claims an
// "Image Region" outline written by another program). The study call sits in TID 1500
// "Qualitative Evaluations", outside any group: it is read from the naturalized dataset.
//
// Library log lines go to stderr; stdout carries only the JSON.

import fs from "node:fs";
import process from "node:process";

import * as core from "@cornerstonejs/core";
import { registerDefaultProviders, utilities as metadataUtilities } from "@cornerstonejs/metadata";
import { adaptersSEG, adaptersSR } from "@cornerstonejs/adapters";
import dcmjs from "dcmjs";

const warnings = [];
const toStderr = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
console.log = toStderr;
console.info = toStderr;
console.debug = () => {};
console.warn = (...args) => {
  warnings.push(args.map(String).join(" "));
  toStderr("warn:", ...args);
};

function parseArguments(argv) {
  const options = { seg: null, sr: null, ct: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--seg") options.seg = argv[++i];
    else if (argv[i] === "--sr") options.sr = argv[++i];
    else options.ct.push(argv[i]);
  }
  if (!options.seg || !options.sr || options.ct.length === 0) {
    throw new Error("usage: node check_seg_sr.mjs --seg SEG.dcm --sr SR.dcm CT.dcm...");
  }
  return options;
}

function readArrayBuffer(path) {
  const bytes = fs.readFileSync(path);
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
}

function naturalize(arrayBuffer) {
  const message = dcmjs.data.DicomMessage.readFile(arrayBuffer);
  return dcmjs.data.DicomMetaDictionary.naturalizeDataset(message.dict);
}

const asArray = (value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);
const first = (value) => asArray(value)[0];

// -- source images ------------------------------------------------------------------

async function registerSourceImages(ctPaths) {
  registerDefaultProviders();
  const sopInstanceUidById = new Map();
  const imageIds = [];
  for (const path of ctPaths) {
    const imageId = `dicomfile:${path}`;
    const arrayBuffer = readArrayBuffer(path);
    await metadataUtilities.addDicomPart10Instance(imageId, arrayBuffer);
    sopInstanceUidById.set(imageId, naturalize(arrayBuffer).SOPInstanceUID);
    imageIds.push(imageId);
  }
  core.metaData.addProvider((type, imageId) => {
    if (type !== "generalImageModule" || !sopInstanceUidById.has(imageId)) return undefined;
    const instance = core.metaData.get("instance", imageId);
    return {
      sopInstanceUID: sopInstanceUidById.get(imageId),
      instanceNumber: Number(instance?.InstanceNumber),
    };
  }, 10000);
  // A viewer shows a series in slice order, not file order.
  const along = (imageId) => {
    const plane = core.metaData.get("imagePlaneModule", imageId);
    const normal = cross(plane.rowCosines, plane.columnCosines);
    return dot(plane.imagePositionPatient, normal);
  };
  return imageIds.sort((a, b) => along(a) - along(b));
}

const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];

// -- SEG ----------------------------------------------------------------------------

function segFrames(seg) {
  const shared = first(seg.SharedFunctionalGroupsSequence) ?? {};
  return asArray(seg.PerFrameFunctionalGroupsSequence).map((frame, index) => {
    const source = first(first(frame.DerivationImageSequence)?.SourceImageSequence);
    const segmentIdentification =
      first(frame.SegmentIdentificationSequence) ?? first(shared.SegmentIdentificationSequence);
    return {
      frame: index + 1,
      segmentNumber: Number(segmentIdentification?.ReferencedSegmentNumber),
      referencedSopInstanceUid: source?.ReferencedSOPInstanceUID ?? null,
      imagePositionPatient: asArray(first(frame.PlanePositionSequence)?.ImagePositionPatient).map(Number),
    };
  });
}

function labelmapSlices(labelMapImages) {
  // One labelmap image per source image; voxels as [flat index, segment] pairs
  // (row-major, as the labelmap's pixel data).
  return labelMapImages.map((image) => {
    const pixels = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
    const voxels = [];
    for (let k = 0; k < pixels.length; k++) {
      if (pixels[k] !== 0) voxels.push([k, pixels[k]]);
    }
    const plane = core.metaData.get("imagePlaneModule", image.referencedImageId);
    return {
      referencedImageId: image.referencedImageId,
      sopInstanceUid: core.metaData.get("generalImageModule", image.referencedImageId)?.sopInstanceUID ?? null,
      imagePositionPatient: plane.imagePositionPatient.map(Number),
      rows: image.rows,
      columns: image.columns,
      voxels,
    };
  });
}

async function readSegmentation(segPath, imageIds) {
  const arrayBuffer = readArrayBuffer(segPath);
  const seg = naturalize(arrayBuffer.slice(0));
  const result = await adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer(imageIds, arrayBuffer, {
    metadataProvider: core.metaData,
  });
  if (result.labelMapImages.length !== 1) {
    throw new Error(`expected one labelmap layer (non-overlapping segments), got ${result.labelMapImages.length}`);
  }
  const slices = labelmapSlices(result.labelMapImages[0]);
  const voxelCounts = {};
  for (const slice of slices) {
    for (const [, segment] of slice.voxels) voxelCounts[segment] = (voxelCounts[segment] ?? 0) + 1;
  }
  const segments = result.segMetadata.data.filter(Boolean).map((segment) => ({
    segmentNumber: Number(segment.SegmentNumber),
    label: segment.SegmentLabel,
    trackingUid: segment.TrackingUID ?? null,
    voxelCount: voxelCounts[Number(segment.SegmentNumber)] ?? 0,
    centroidWorld: result.centroids.get(Number(segment.SegmentNumber))?.world ?? null,
  }));
  return {
    sopClassUid: seg.SOPClassUID,
    segmentationType: seg.SegmentationType,
    numberOfFrames: Number(seg.NumberOfFrames),
    rows: Number(seg.Rows),
    columns: Number(seg.Columns),
    overlappingSegments: Boolean(result.overlappingSegments),
    segments,
    frames: segFrames(seg),
    labelmap: slices,
  };
}

// -- SR -----------------------------------------------------------------------------

function codeOf(item) {
  const code = first(item);
  return code ? { value: code.CodeValue, scheme: code.CodingSchemeDesignator, meaning: code.CodeMeaning } : null;
}

// CODE items of a group that are not qualitative evaluations (TID 1501/1411 context rows).
const NOT_EVALUATIONS = new Set(["Finding", "Finding Site", "Finding category", "Algorithm Family"]);

// The adapter handed to MeasurementReport.generateToolState for every group.
const measurementGroupAdapter = {
  toolType: "MeasurementGroupReader",
  getMeasurementData(measurementGroup, _sopInstanceUidToImageIdMap, _metadata, trackingIdentifier) {
    const items = asArray(measurementGroup.ContentSequence);
    const named = (meaning) => items.filter((item) => first(item.ConceptNameCodeSequence)?.CodeMeaning === meaning);
    const measurements = items
      .filter((item) => item.ValueType === "NUM")
      .map((item) => {
        const measured = first(item.MeasuredValueSequence);
        return {
          name: codeOf(item.ConceptNameCodeSequence),
          value: Number(measured?.NumericValue),
          valueText: String(measured?.NumericValue),
          unit: codeOf(measured?.MeasurementUnitsCodeSequence),
          derivation: codeOf(first(asArray(item.ContentSequence).filter(
            (child) => first(child.ConceptNameCodeSequence)?.CodeMeaning === "Derivation",
          ))?.ConceptCodeSequence),
        };
      });
    const referencedSegment = first(named("Referenced Segment"));
    const referencedSop = first(referencedSegment?.ReferencedSOPSequence);
    const region = first(items.filter((item) => item.ValueType === "SCOORD"));
    const selectedFrom = first(asArray(region?.ContentSequence).filter((child) => child.RelationshipType === "SELECTED FROM"));
    return {
      trackingIdentifier,
      finding: codeOf(first(named("Finding"))?.ConceptCodeSequence),
      measurements,
      qualitativeEvaluations: items
        .filter((item) => item.ValueType === "CODE")
        .filter((item) => !NOT_EVALUATIONS.has(first(item.ConceptNameCodeSequence)?.CodeMeaning))
        .map((item) => ({ name: codeOf(item.ConceptNameCodeSequence), value: codeOf(item.ConceptCodeSequence) })),
      region: region
        ? {
            name: codeOf(region.ConceptNameCodeSequence),
            graphicType: region.GraphicType,
            graphicData: Array.from(asArray(region.GraphicData), Number),
            referencedSopInstanceUid: first(selectedFrom?.ReferencedSOPSequence)?.ReferencedSOPInstanceUID ?? null,
          }
        : null,
      referencedSegment: referencedSop
        ? {
            sopInstanceUid: referencedSop.ReferencedSOPInstanceUID,
            segmentNumber: Number(first(referencedSop.ReferencedSegmentNumber)),
          }
        : null,
    };
  },
};

function readReport(srPath, imageIds) {
  const sr = naturalize(readArrayBuffer(srPath));
  const sopInstanceUidToImageIdMap = Object.fromEntries(
    imageIds.map((imageId) => [core.metaData.get("generalImageModule", imageId).sopInstanceUID, imageId]),
  );
  const MeasurementReport = adaptersSR.Cornerstone3D.MeasurementReport;
  // A negative study's report has no Imaging Measurements container (TID 1500 row 6 is
  // optional when row 12 is present). The adapter's reader assumes one and throws;
  // OHIF's own SR loader, which displays the report, returns no measurements instead.
  const hasImagingMeasurements = asArray(sr.ContentSequence).some(
    (item) => first(item.ConceptNameCodeSequence)?.CodeMeaning === "Imaging Measurements",
  );
  const toolState = hasImagingMeasurements
    ? MeasurementReport.generateToolState(sr, sopInstanceUidToImageIdMap, core.metaData, {
        getToolClass: () => measurementGroupAdapter,
      })
    : {};
  const groups = (toolState[measurementGroupAdapter.toolType] ?? []).map((measurement) => ({
    trackingIdentifier: measurement.trackingIdentifier,
    trackingUid: measurement.TrackingUniqueIdentifier ?? null,
    finding: measurement.finding,
    measurements: measurement.measurements,
    qualitativeEvaluations: measurement.qualitativeEvaluations,
    region: measurement.region,
    referencedSegment: measurement.referencedSegment,
  }));
  const qualitative = first(asArray(sr.ContentSequence).filter(
    (item) => first(item.ConceptNameCodeSequence)?.CodeMeaning === "Qualitative Evaluations",
  ));
  const studyCall = asArray(qualitative?.ContentSequence).map((item) => ({
    name: codeOf(item.ConceptNameCodeSequence),
    valueType: item.ValueType,
    code: item.ValueType === "CODE" ? codeOf(item.ConceptCodeSequence) : null,
    text: item.ValueType === "TEXT" ? item.TextValue : null,
  }));
  return {
    sopClassUid: sr.SOPClassUID,
    templateIdentifier: first(sr.ContentTemplateSequence)?.TemplateIdentifier ?? null,
    completionFlag: sr.CompletionFlag,
    verificationFlag: sr.VerificationFlag,
    toolTypes: Object.keys(toolState),
    groups,
    studyCall,
  };
}

// -- main ---------------------------------------------------------------------------

async function main() {
  const options = parseArguments(process.argv.slice(2));
  const imageIds = await registerSourceImages(options.ct);
  const segmentation = await readSegmentation(options.seg, imageIds);
  const report = readReport(options.sr, imageIds);
  const versions = {
    node: process.versions.node,
    dcmjs: readVersion("dcmjs"),
    "@cornerstonejs/adapters": readVersion("@cornerstonejs/adapters"),
    "@cornerstonejs/core": readVersion("@cornerstonejs/core"),
    "@cornerstonejs/metadata": readVersion("@cornerstonejs/metadata"),
  };
  process.stdout.write(JSON.stringify({ versions, segmentation, report, warnings }) + "\n");
}

function readVersion(name) {
  const url = new URL(`./node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(fs.readFileSync(url, "utf8")).version;
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`check_seg_sr failed: ${error?.stack ?? error}\n`);
    process.exit(1);
  },
);
