"""The project's stand-in for `tensorflow_model_server`, for machines where TF Serving's binary cannot
be installed (local runs, CI, the embedded mode). Compose and Kubernetes run the real
`tensorflow/serving` image; this server exists so that the inference service is built and tested
against the very same gRPC API and model base path layout.

What it implements, with TF Serving's semantics (and its error codes and messages, so that the
client maps both the same way):

- PredictionService.Predict and GetModelMetadata (signature_def);
- ModelService.GetModelStatus (states START/LOADING/AVAILABLE/UNLOADING/END, load errors in `status`)
  and HandleReloadConfigRequest (model_config_list: name, base_path, model_version_policy
  latest/all/specific, version_labels — a label may only point at an AVAILABLE version unless
  CLASSFORGE_ALLOW_VERSION_LABELS_FOR_UNAVAILABLE_MODELS is set, exactly like the real flag);
- the file-system source: `<base_path>/<model>/<integer version>/saved_model.pb`, polled every
  CLASSFORGE_MODEL_POLL_SECONDS; a version directory without saved_model.pb is not loaded yet
  (publishers copy it last); non-numeric children are ignored; new versions load before old ones are
  unloaded (TF Serving's availability-preserving policy).

What it does not: REST, Classify/Regress/MultiInference, server-side batching, model warm-up,
Prometheus metrics under TF Serving's names (it exports classforge_model_server_* instead).

Without a config (no CLASSFORGE_MODEL_CONFIG_FILE and no reload yet) every directory under the base
path is a model with the policy `latest { num_versions: CLASSFORGE_MODEL_NUM_VERSIONS }` (default 1,
TF Serving's default); this is what `tensorflow_model_server --model_base_path` does for one model.
"""
