"""The inference service: publishes blessed models to the model server (TF Serving or the project's
stand-in, services.model_server) and answers Classify through TF Serving's PredictionService."""
