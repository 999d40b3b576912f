"""From received DICOM to model input: series selection, HU volumes, windows, crops.

Nothing here imports torch or the models; the pipeline composes these steps.
"""
