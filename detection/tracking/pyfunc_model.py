"""The detector's exported TorchScript file as an MLflow pyfunc model (a model from code)."""
import mlflow
import numpy as np

from detection.models.deployment import ContractModel


class ExportedFile(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.model = ContractModel.of_file(context.artifacts["model"])

    def predict(self, context, model_input: np.ndarray, params=None):
        return self.model(model_input)


mlflow.models.set_model(ExportedFile())
