"""Errors inside an asset as Dagster run failures with a plain message (no stack of MLflow internals)."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from assets.prompts.registry import RegistryError
from resources.agent.prompts import PromptNotFound
from resources.mlflow import MlflowResource
from resources.serving import DeployError
from resources.settings import mask_uri, scrub


@contextmanager
def run_failures(mlflow: MlflowResource) -> Iterator[None]:
    """Errors as run failures with a plain message: a registry in the wrong state or a failed deployment says
    why; any other MLflow error names the store (password masked)."""
    try:
        yield
    except (RegistryError, PromptNotFound, DeployError) as exc:
        raise dg.Failure(description=str(exc)) from None
    except dg.Failure:
        raise
    except Exception as exc:
        uri = mlflow.tracking_uri  # not chained: the original error may show the password
        raise dg.Failure(description=f"MLflow at {mask_uri(uri)} failed: {scrub(str(exc), uri)[:2000]}") from None
