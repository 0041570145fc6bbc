"""The code file of s4v's MLflow models (MLflow "models from code"): MLflow runs it to get the
model object, so the logged model pickles nothing. See :mod:`s4v_orchestration.inference.pyfunc`."""

from mlflow.models import set_model

from s4v_orchestration.inference.pyfunc import S4VPyfunc

set_model(S4VPyfunc())
