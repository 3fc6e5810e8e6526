"""Embedded defaults and the environment variables that override them.

Every component reads its location from the environment, so that the `llmops` CLI, `dagster dev`,
`dagster asset materialize` and the tests all agree. `apply_defaults()` fills in whatever the user did
not set, which lets Dagster resources read plain `EnvVar`s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
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
LLMOPS_ALERT_RULES = "LLMOPS_ALERT_RULES"
LLMOPS_HEALTH_CRON = "LLMOPS_HEALTH_CRON"
LLMOPS_PUBLIC_URL = "LLMOPS_PUBLIC_URL"  # where `llmops serve` is reachable, for links (no default)
LLMOPS_JUDGE_ENDPOINT = "LLMOPS_JUDGE_ENDPOINT"
LLMOPS_API_TOKEN = "LLMOPS_API_TOKEN"
LLMOPS_API_TOKENS = "LLMOPS_API_TOKENS"
LLMOPS_AGENT_BACKEND = "LLMOPS_AGENT_BACKEND"
LLMOPS_AGENT_ENDPOINT = "LLMOPS_AGENT_ENDPOINT"
LLMOPS_MLFLOW_RETRY_S = "LLMOPS_MLFLOW_RETRY_S"
DAGSTER_HOME = "DAGSTER_HOME"

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_OUTCOMES_FILE = PROJECT_DIR / "outcomes" / "outcomes.yaml"  # which traces went badly (root causes)
DEFAULT_ALERT_RULES_FILE = PROJECT_DIR / "alerts" / "rules.yaml"  # what alerts, and whom it notifies

DEFAULT_DEMO_EXPERIMENT = "llmops-demo"
DEFAULT_REFRESH_CRON = "0 * * * *"  # hourly
DEFAULT_EVALS_CRON = "0 6 * * *"  # daily, 06:00 UTC
DEFAULT_HEALTH_CRON = "*/5 * * * *"  # the deployed endpoint's health check, every 5 minutes
DEFAULT_FEEDBACK_SETTLE_S = 60.0
DEFAULT_MAX_DELETE_SHARE = 0.5  # an extract deleting more of the warehouse's traces is refused
DEFAULT_EVAL_PASS_THRESHOLD = 0.8  # least overall pass rate of a candidate prompt
DEFAULT_EVAL_TOLERANCE = 0.05  # how far below production's pass rate a candidate may be
DEFAULT_MLFLOW_RETRY_S = 20.0  # how long one MLflow call of the API trace source may keep failing
DEFAULT_AGENT_ENDPOINT = "databricks-meta-llama-3-3-70b-instruct"  # Databricks backend of the demo agent

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


def _anything(_value: str) -> str | None:
    return None


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def problem(value: str) -> str | None:
        return None if value.strip().lower() in choices else f"must be {' or '.join(map(repr, choices))}"
    return problem


def _number(low: float, high: float | None = None) -> Callable[[str], str | None]:
    def problem(value: str) -> str | None:
        try:
            number = float(value)
        except ValueError:
            return "must be a number"
        if number < low or (high is not None and number > high) or number != number:
            return f"must be between {low:g} and {high:g}" if high is not None else f"must be at least {low:g}"
        return None
    return problem


def _cron(value: str) -> str | None:
    from dagster._utils.schedules import is_valid_cron_string  # dagster's own reading of a schedule's cron

    return None if is_valid_cron_string(value.strip()) else "must be a 5-field cron string such as '0 * * * *'"


def _url(value: str) -> str | None:
    parts = urlsplit(value)
    return None if parts.scheme in ("http", "https") and parts.netloc else "must be an http(s):// URL"


def _existing_file(value: str) -> str | None:
    return None if Path(value).is_file() else "must name an existing file"


def _existing_dir(value: str) -> str | None:
    return None if Path(value).is_dir() else "must name an existing folder"


@dataclass(frozen=True)
class Setting:
    """One environment variable: its embedded default (from $LLMOPS_HOME, or None: unset unless the user sets
    it), what a value must be, and whether it is a secret (`llmops config` shows *** for it)."""

    name: str
    default: Callable[[Path], str] | None
    problem: Callable[[str], str | None] = _anything
    secret: bool = False
    is_path: bool = False  # its problem is whether the path exists: checked by `llmops config`, not every command


# Every setting, in the order `llmops config` prints them; README "Configuration" says what each means.
SETTINGS: tuple[Setting, ...] = (
    Setting(LLMOPS_HOME, lambda home: str(home)),
    Setting(MLFLOW_TRACKING_URI, lambda home: f"sqlite:///{home / 'mlflow.db'}"),
    Setting(LLMOPS_DUCKDB_PATH, lambda home: str(home / "warehouse.duckdb")),
    Setting(LLMOPS_TRACE_SOURCE, lambda _: "auto", _one_of("auto", "sql", "api")),
    Setting(LLMOPS_MLFLOW_RETRY_S, lambda _: str(DEFAULT_MLFLOW_RETRY_S), _number(0)),
    Setting(DAGSTER_HOME, None),  # ensure_dagster_home() sets it for llmops; Dagster's own commands read it
    Setting(LLMOPS_DEMO_EXPERIMENT, lambda _: DEFAULT_DEMO_EXPERIMENT),
    Setting(LLMOPS_REPORTS_DIR, lambda home: str(home / "reports")),
    Setting(LLMOPS_PUBLIC_URL, None, _url),
    Setting(LLMOPS_PROMPTS_DIR, lambda _: str(PROJECT_DIR / "prompts"), _existing_dir, is_path=True),
    Setting(LLMOPS_EVALS_DIR, lambda _: str(PROJECT_DIR / "evals"), _existing_dir, is_path=True),
    Setting(LLMOPS_EVAL_EXPERIMENT, lambda _: "llmops-evals"),
    Setting(LLMOPS_EVAL_PASS_THRESHOLD, lambda _: str(DEFAULT_EVAL_PASS_THRESHOLD), _number(0, 1)),
    Setting(LLMOPS_EVAL_TOLERANCE, lambda _: str(DEFAULT_EVAL_TOLERANCE), _number(0, 1)),
    Setting(LLMOPS_JUDGE_ENDPOINT, None),
    Setting(LLMOPS_MODEL_NAME, lambda _: "llmops_support_agent"),
    Setting(LLMOPS_DEPLOY_CONFIG, lambda _: str(PROJECT_DIR / "deploy" / "environments.yaml"), _existing_file,
            is_path=True),
    Setting(LLMOPS_DEPLOY_ENV, lambda _: "dev"),
    Setting(LLMOPS_SERVING_DIR, lambda home: str(home / "serving")),
    Setting(LLMOPS_LABELING_RULES, lambda _: str(PROJECT_DIR / "labeling" / "rules.yaml"), _existing_file,
            is_path=True),
    Setting(LLMOPS_OUTCOMES, lambda _: str(DEFAULT_OUTCOMES_FILE), _existing_file, is_path=True),
    Setting(LLMOPS_ALERT_RULES, lambda _: str(DEFAULT_ALERT_RULES_FILE), _existing_file, is_path=True),
    Setting(LLMOPS_AUTOMATION, lambda _: "on", _one_of("on", "off")),
    Setting(LLMOPS_REFRESH_CRON, lambda _: DEFAULT_REFRESH_CRON, _cron),
    Setting(LLMOPS_EVALS_CRON, lambda _: DEFAULT_EVALS_CRON, _cron),
    Setting(LLMOPS_HEALTH_CRON, lambda _: DEFAULT_HEALTH_CRON, _cron),
    Setting(LLMOPS_FEEDBACK_SETTLE_S, lambda _: str(DEFAULT_FEEDBACK_SETTLE_S), _number(0)),
    Setting(LLMOPS_MAX_DELETE_SHARE, lambda _: str(DEFAULT_MAX_DELETE_SHARE), _number(0, 1)),
    Setting(LLMOPS_API_TOKEN, None, secret=True),
    Setting(LLMOPS_API_TOKENS, None, secret=True),
    Setting(LLMOPS_AGENT_BACKEND, lambda _: "offline", _one_of("offline", "databricks")),
    Setting(LLMOPS_AGENT_ENDPOINT, lambda _: DEFAULT_AGENT_ENDPOINT),
)


def apply_defaults() -> dict[str, str]:
    """Set every unset variable that has an embedded default to it; return the effective values (set ones)."""
    home = llmops_home()
    os.environ[LLMOPS_HOME] = str(home)
    for setting in SETTINGS:
        if setting.default is not None and not os.environ.get(setting.name, "").strip():
            os.environ[setting.name] = setting.default(home)
    return {s.name: os.environ[s.name] for s in SETTINGS if os.environ.get(s.name, "").strip()}


def _problem(setting: Setting, value: str) -> str | None:
    if problem := setting.problem(value):
        return f"{setting.name} {problem}, not {'***' if setting.secret else mask_uri(value)!r}"
    return None


def problems(check_paths: bool) -> list[str]:
    """What is wrong with the effective settings, one sentence each naming the variable and its value."""
    return [found for setting in SETTINGS
            if (value := os.environ.get(setting.name, "").strip()) and (check_paths or not setting.is_path)
            and (found := _problem(setting, value))]


def checked(name: str) -> str | None:
    """The value of setting `name` (None when unset); a malformed one is a ValueError naming it."""
    value = os.environ.get(name, "").strip()
    if value and (found := _problem(next(s for s in SETTINGS if s.name == name), value)):
        raise ValueError(found)
    return value or None


def shown_value(setting: Setting) -> str:
    """The value as `llmops config` prints it: secrets as ***, URIs masked, unset as such."""
    value = os.environ.get(setting.name, "").strip()
    if not value:
        return "(unset)"
    return "***" if setting.secret else mask_uri(value)


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
