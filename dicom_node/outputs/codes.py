"""The coded concepts our SEG, SR and key images use, in one table.

Every code is taken from the code dictionaries that ship with pydicom (the
same tables highdicom uses, generated from PS3.16), so that value, scheme and
meaning are the standard's and never typed by hand. The two exceptions are the
UCUM unit for millilitres and TID 1500's "Qualitative Evaluations" container,
which those dictionaries do not hold; they are spelled out below with the reason.

Choices worth knowing (each checked against the dictionaries, PS3.16 CIDs in
brackets):

* the finding is SCT 1386000 "Intracranial hemorrhage"; the segment category is
  SCT 49755003 "Morphologically abnormal structure" [CID 7150], the anatomic
  region and finding site SCT 12738006 "Brain" [CID 4, CID 7151];
* the algorithm family is DCM 123110 "Artificial Intelligence" [CID 7162]
  (DCM 113037 is "Rejected for Patient Safety Reasons", a KOS title);
* the procedure reported is LOINC 25045-6 "CT unspecified body region" [CID
  100]. CID 100 (up to 2025) has no head CT code; a code from outside it (SCT
  303653007 "Computed tomography of head") would be more precise, but CID 100
  offers an appropriate one, and validators (PixelMed) reject any other. The
  head is said elsewhere: the finding site of every group is the brain;
* the study-level call is a qualitative evaluation whose concept is the
  finding itself and whose value is SCT 52101004 "Present" or SCT 272519000
  "Absent" [CID 240, CID 241: present/absent];
* the measurements follow TID 1411/TID 1419 usage: SCT 118565006 "Volume"
  [CID 7472], SCT 103339001 "Long axis" [CID 7470] for the longest axial
  diameter (the RECIST long axis), DCM 112031 "Attenuation Coefficient"
  [CID 7180] with derivation SCT 373098007 "Mean" [CID 7464] for mean HU;
* the lesion confidence is DCM 111012 "Certainty of Finding" [CID 6048, the CAD
  probability and certainty concepts] and the study-level probability DCM 122157
  "Probability", both unitless in [0, 1].
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

#: The finding, the segmented property type, and the study-level question.
INTRACRANIAL_HEMORRHAGE: Code = codes.SCT.IntracranialHemorrhage
#: Segmented property category of a lesion (PS3.3 C.8.20.2, CID 7150).
MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code = codes.SCT.MorphologicallyAbnormalStructure
#: Anatomic region of the segments and finding site of the measurements.
BRAIN: Code = codes.SCT.Brain

#: Algorithm family of a trained model (CID 7162).
ARTIFICIAL_INTELLIGENCE: Code = codes.cid7162.ArtificialIntelligence
#: Algorithm family of the classical HU-threshold baseline (thresholding plus
#: hole filling and connected components; CID 7162 has no plainer term).
MORPHOLOGICAL_OPERATIONS: Code = codes.cid7162.MorphologicalOperations

#: Observer type of the node in the SR's observation context (TID 1002, CID 270).
DEVICE_OBSERVER: Code = codes.cid270.Device

#: Purpose of reference of a key image's Source Image Sequence item (CID 7202).
SOURCE_IMAGE_FOR_PROCESSING: Code = codes.DCM.SourceImageForImageProcessingOperation

#: Procedure reported in TID 1500 row 4 (CID 100).
CT_UNSPECIFIED_BODY_REGION: Code = codes.cid100.CTUnspecifiedBodyRegion

#: Title (TID 1500 row 1) of a report without measurements, a negative study's: CID 7021 is
#: extensible, and a report titled "Imaging Measurement Report" promises measurements (OHIF
#: fails on one that has none). LOINC's "CT Head Report" from CID 7000 says what it is.
REPORT_WITHOUT_MEASUREMENTS_TITLE: Code = codes.cid7000.CTHeadReport

#: Values of the study-level qualitative evaluation.
PRESENT: Code = codes.SCT.Present
ABSENT: Code = codes.SCT.Absent

#: Measurement concepts of a lesion (TID 1410, TID 1411) and the name of the study probability.
VOLUME: Code = codes.SCT.Volume
LONG_AXIS: Code = codes.SCT.LongAxis
ATTENUATION_COEFFICIENT: Code = codes.DCM.AttenuationCoefficient
MEAN: Code = codes.SCT.Mean
CERTAINTY_OF_FINDING: Code = codes.DCM.CertaintyOfFinding
PROBABILITY: Code = codes.DCM.Probability
#: A lesion's cross-section on its key slice (TID 1501), and the caption that names it (TID 1501).
AREA: Code = codes.SCT.Area
COMMENT: Code = codes.DCM.Comment

#: TID 1500 row 12, the container of the study-level call. pydicom's
#: dictionaries do not hold this UMLS concept; the code is the one PS3.16
#: TID 1500 gives for the row.
#: Its TEXT rows also say which result object is missing, and why.
QUALITATIVE_EVALUATIONS: Code = Code("C0034375", "UMLS", "Qualitative Evaluations")

#: UCUM units. pydicom's dictionaries have no plain millilitre (only compound
#: units such as ml/min); "mL" is the UCUM case-sensitive symbol for it.
MILLILITER: Code = Code("mL", "UCUM", "milliliter")
MILLIMETER: Code = codes.UCUM.Millimeter
SQUARE_MILLIMETER: Code = codes.UCUM.SquareMillimeter
HOUNSFIELD_UNIT: Code = codes.UCUM.HounsfieldUnit
NO_UNITS: Code = codes.UCUM.NoUnits
