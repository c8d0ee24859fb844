"""The evaluator service (issue #6): metrics, error gallery, suspected mislabels, Grad-CAM, HTML report
and the blessing gate. engine.py runs one pass; domain.py is the service logic; cli.py the command.

Report layout, reports/<job_id>/ (or the CLI's --out DIR):
  evaluation.json          every number, the gates, the baseline and the decision; written LAST
  index.html               offline page (inline CSS, no scripts, relative links only)
  plots/                   confusion matrices (raw, row-normalised), per-class bars, reliability, training curves
  gallery/<true>/<pred>/   <probability>_<source_id[:12]>.png (gallery/<task>/… with several tasks)
  mislabels/               thumbnails of the confident mistakes, ranked
  duplicates/              thumbnails of images that appear with different labels
  cams/<true>/             correct_/wrong_<probability>_<source_id[:12]>.png Grad-CAM overlays
"""
