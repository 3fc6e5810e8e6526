"""Embedded defaults and the environment variables that override them.

Every component reads its location from the environment, so that the `llmops` CLI, `dagster dev`,
`dagster asset materialize` and the tests all agree. `apply_defaults()` fills in whatever the user did
not set, which lets Dagster resources read plain `EnvVar`s.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

LLMOPS_HOME = "LLMOPS_HOME"
MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
LLMOPS_DUCKDB_PATH = "LLMOPS_DUCKDB_PATH"
LLMOPS_TRACE_SOURCE = "LLMOPS_TRACE_SOURCE"
LLMOPS_DEMO_EXPERIMENT = "LLMOPS_DEMO_EXPERIMENT"
LLMOPS_REPORTS_DIR = "LLMOPS_REPORTS_DIR"
LLMOPS_PROMPTS_DIR = "LLMOPS_PROMPTS_DIR"
LLMOPS_EVALS_DIR = "LLMOPS_EVALS_DIR"
LLMOPS_EVAL_EXPERIMENT = "LLMOPS_EVAL_EXPERIMENT"
LLMOPS_EVAL_PASS_THRESHOLD = "LLMOPS_EVAL_PASS_THRESHOLD"
LLMOPS_EVAL_TOLERANCE = "LLMOPS_EVAL_TOLERANCE"
LLMOPS_FEEDBACK_SETTLE_S = "LLMOPS_FEEDBACK_SETTLE_S"
LLMOPS_MAX_DELETE_SHARE = "LLMOPS_MAX_DELETE_SHARE"
LLMOPS_AUTOMATION = "LLMOPS_AUTOMATION"
LLMOPS_REFRESH_CRON = "LLMOPS_REFRESH_CRON"
LLMOPS_EVALS_CRON = "LLMOPS_EVALS_CRON"
LLMOPS_MODEL_NAME = "LLMOPS_MODEL_NAME"
LLMOPS_DEPLOY_CONFIG = "LLMOPS_DEPLOY_CONFIG"
LLMOPS_DEPLOY_ENV = "LLMOPS_DEPLOY_ENV"
LLMOPS_SERVING_DIR = "LLMOPS_SERVING_DIR"
LLMOPS_LABELING_RULES = "LLMOPS_LABELING_RULES"
LLMOPS_OUTCOMES = "LLMOPS_OUTCOMES"
DAGSTER_HOME = "DAGSTER_HOME"

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_OUTCOMES_FILE = PROJECT_DIR / "outcomes" / "outcomes.yaml"  # which traces went badly (root causes)

DEFAULT_DEMO_EXPERIMENT = "llmops-demo"
DEFAULT_REFRESH_CRON = "0 * * * *"  # hourly
DEFAULT_EVALS_CRON = "0 6 * * *"  # daily, 06:00 UTC
DEFAULT_FEEDBACK_SETTLE_S = 60.0
DEFAULT_MAX_DELETE_SHARE = 0.5  # an extract deleting more of the warehouse's traces is refused

# Dagster instance settings: one writer at a time for the DuckDB file (pool `duckdb_write`), and runs whose worker
# died failed within a minute or so, their slots freed and their retries launched (orchestration/run_monitoring.py).
_DAGSTER_YAML_HEADER = "# Written by llmops-platform."
_RUN_MONITORING_YAML = """\
# A run whose worker process died (SIGKILL, out of memory) is failed, its pool slots freed, its retry launched.
run_launcher:
  module: orchestration.run_monitoring
  class: LocalRunLauncher
run_monitoring:
  enabled: true
  poll_interval_seconds: 15
  max_resume_run_attempts: 0
  free_slots_after_run_end_seconds: 5
"""
_DAGSTER_YAML = f"""\
{_DAGSTER_YAML_HEADER} Runs that write the DuckDB warehouse share the pool `duckdb_write`.
concurrency:
  pools:
    default_limit: 1
# Labeling and warehouse runs ask for retries (tag dagster/max_retries); a retried run adds nothing twice.
run_retries:
  enabled: true
  max_retries: 0
telemetry:
  enabled: false
{_RUN_MONITORING_YAML}"""


def llmops_home() -> Path:
    return Path(os.environ.get(LLMOPS_HOME) or ".llmops").expanduser().resolve()


def apply_defaults() -> dict[str, str]:
    """Set every unset variable to its embedded default; return the effective values."""
    home = llmops_home()
    os.environ[LLMOPS_HOME] = str(home)
    os.environ.setdefault(MLFLOW_TRACKING_URI, f"sqlite:///{home / 'mlflow.db'}")
    os.environ.setdefault(LLMOPS_DUCKDB_PATH, str(home / "warehouse.duckdb"))
    os.environ.setdefault(LLMOPS_TRACE_SOURCE, "auto")
    os.environ.setdefault(LLMOPS_DEMO_EXPERIMENT, DEFAULT_DEMO_EXPERIMENT)
    os.environ.setdefault(LLMOPS_REPORTS_DIR, str(home / "reports"))
    os.environ.setdefault(LLMOPS_PROMPTS_DIR, str(PROJECT_DIR / "prompts"))
    os.environ.setdefault(LLMOPS_EVALS_DIR, str(PROJECT_DIR / "evals"))
    os.environ.setdefault(LLMOPS_EVAL_EXPERIMENT, "llmops-evals")
    os.environ.setdefault(LLMOPS_MODEL_NAME, "llmops_support_agent")
    os.environ.setdefault(LLMOPS_DEPLOY_CONFIG, str(PROJECT_DIR / "deploy" / "environments.yaml"))
    os.environ.setdefault(LLMOPS_DEPLOY_ENV, "dev")
    os.environ.setdefault(LLMOPS_SERVING_DIR, str(home / "serving"))
    os.environ.setdefault(LLMOPS_LABELING_RULES, str(PROJECT_DIR / "labeling" / "rules.yaml"))
    os.environ.setdefault(LLMOPS_OUTCOMES, str(DEFAULT_OUTCOMES_FILE))
    os.environ.setdefault(LLMOPS_AUTOMATION, "on")
    os.environ.setdefault(LLMOPS_REFRESH_CRON, DEFAULT_REFRESH_CRON)
    os.environ.setdefault(LLMOPS_EVALS_CRON, DEFAULT_EVALS_CRON)
    os.environ.setdefault(LLMOPS_FEEDBACK_SETTLE_S, str(DEFAULT_FEEDBACK_SETTLE_S))
    os.environ.setdefault(LLMOPS_MAX_DELETE_SHARE, str(DEFAULT_MAX_DELETE_SHARE))
    return {
        name: os.environ[name]
        for name in (LLMOPS_HOME, MLFLOW_TRACKING_URI, LLMOPS_DUCKDB_PATH, LLMOPS_TRACE_SOURCE, LLMOPS_REPORTS_DIR,
                     LLMOPS_PROMPTS_DIR, LLMOPS_EVALS_DIR, LLMOPS_EVAL_EXPERIMENT, LLMOPS_MODEL_NAME,
                     LLMOPS_DEPLOY_CONFIG, LLMOPS_DEPLOY_ENV, LLMOPS_SERVING_DIR, LLMOPS_LABELING_RULES, LLMOPS_OUTCOMES,
                     LLMOPS_FEEDBACK_SETTLE_S, LLMOPS_MAX_DELETE_SHARE, LLMOPS_AUTOMATION, LLMOPS_REFRESH_CRON, LLMOPS_EVALS_CRON)
    }


def env_float(name: str, default: float) -> float:
    """A number from the environment; a value that is not one is an error naming the variable."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None


def ensure_dagster_home() -> Path:
    """Use $DAGSTER_HOME, or create `$LLMOPS_HOME/dagster` with the instance settings we rely on."""
    home = Path(os.environ.get(DAGSTER_HOME) or llmops_home() / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(_DAGSTER_YAML)
    elif (text := config.read_text()).startswith(_DAGSTER_YAML_HEADER) and "run_monitoring:" not in text:
        config.write_text(f"{text.rstrip()}\n{_RUN_MONITORING_YAML}")  # written by an earlier version: add it
    os.environ[DAGSTER_HOME] = str(home)
    return home


# Query-string parameters whose value is a secret (`?password=`, `?token=`, `?api_key=`, `?sig=`, ...).
_SECRET_PARAMETER = re.compile(r"pass|pwd|token|secret|key|auth|credential|signature|^sig$", re.IGNORECASE)


def _uri_secrets(uri: str) -> list[str]:
    """The secret parts of a URI as they appear in it: the userinfo password and secret query values."""
    if "://" not in uri:
        return []
    parts = urlsplit(uri)
    secrets = [parts.password] if parts.password else []
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if value and _SECRET_PARAMETER.search(unquote(name)):
            secrets.append(value)
    return secrets


def mask_uri(uri: str) -> str:
    """The URI with its secrets (userinfo password, credential query parameters) shown as ***, for logs,
    errors and Dagster metadata. The one masking function: everything that prints a URI goes through it."""
    masked = uri
    parts = urlsplit(uri) if "://" in uri else None
    if parts is not None and parts.password:
        userinfo, _, host = parts.netloc.rpartition("@")
        masked = masked.replace(f"{parts.scheme}://{parts.netloc}",
                                f"{parts.scheme}://{userinfo.partition(':')[0]}:***@{host}", 1)
    if parts is not None and parts.query:
        query = "&".join(
            f"{name}=***" if value and _SECRET_PARAMETER.search(unquote(name)) else f"{name}{eq}{value}"
            for name, eq, value in (pair.partition("=") for pair in parts.query.split("&"))
        )
        masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked


def scrub(text: str, uri: str) -> str:
    """`text` (an error message, say) with every secret of `uri`, raw or percent-decoded, replaced by ***."""
    for secret in sorted({form for raw in _uri_secrets(uri) for form in (raw, unquote(raw))} - {""}, key=len,
                         reverse=True):
        text = text.replace(secret, "***")
    return text
