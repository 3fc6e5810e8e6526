"""The names the platform writes into MLflow and Dagster and reads back: aliases, tags, metrics, metadata keys.

One home, so that whoever writes a name and whoever reads it cannot drift apart. Each says what it marks and
who reads it.
"""

# --- aliases -------------------------------------------------------------------------------------------------------
CANDIDATE = "candidate"  # prompt alias on the version holding the file's content: set by sync, evaluated, promoted
PRODUCTION = "production"  # prompt alias of what the agent serves: moved by promotion/rollback, loaded by the agent
CHALLENGER = "challenger"  # model alias on the newest agent version: set by agent_model, deployed by agent_deployment
CHAMPION = "champion"  # model alias on the agent version that serves: moved by agent_deployment after its smoke test

# --- prompt version tags (some also on model versions) --------------------------------------------------------------
HASH_TAG = "llmops.content_hash"  # the file's content hash: sync registers a version only when it differs
SOURCE_TAG = "llmops.source_file"  # the file the version came from: prompt_registry's history shows it
COMMIT_TAG = "llmops.git_commit"  # the git commit of the prompts (of the project, on model versions): history shows it
PROMOTED_AT = "llmops.promoted_at"  # one stamp per promotion: rollback moves the prompts of the latest stamp together
PROMOTED_BY = "llmops.promoted_by"  # the Dagster run that promoted the version: evidence for people
PREVIOUS_PRODUCTION = "llmops.previous_production"  # the version a promotion replaced: what rollback returns to
EVAL_RUN_TAG = "llmops.eval_run_id"  # the eval runs behind a promotion: agent_model copies it to the model version
PASS_RATE_TAG = "llmops.eval_pass_rate"  # suite=rate of the candidate in that evaluation: evidence for people
BASELINE_RATE_TAG = "llmops.baseline_pass_rate"  # suite=rate of production in that evaluation: evidence for people
ROLLED_BACK_AT = "llmops.rolled_back_at"  # on a prompt or model version a rollback left: promotion skips such prompts

# --- eval run tags and metrics (written by prompt_evals) ------------------------------------------------------------
ROLE_TAG = "llmops.role"  # which prompts the run evaluated, CANDIDATE or PRODUCTION: promotion reads candidate runs
SUITE_TAG = "llmops.suite"  # the eval suite: promotion's evidence names the rate per suite
GATE_TAG = "llmops.gate"  # GATE_PASSED or GATE_FAILED on candidate runs: promotion needs a passed one
GATE_PASSED, GATE_FAILED = "passed", "failed"  # GATE_TAG's values, also the warehouse's eval_runs.gate
DIGEST_TAG = "llmops.dataset_digest"  # the suite's content digest: tells which examples a run saw
DAGSTER_RUN_TAG = "llmops.dagster_run_id"  # the prompt_evals run: promotion takes the candidate runs of the latest one
NOTE_TAG = "llmops.note"  # what the evaluation skipped (LLM judges offline): for people reading the run
PROMPT_TAG_PREFIX = "llmops.prompt."  # + prompt name: its version in an eval run or model version; promotion filters
EXAMPLE_ID_TAG = "example_id"  # on each eval dataset record and trace: the suite example; per-example results read it
PASS_RATE_METRIC = "overall_pass_rate"  # share of examples passing every scorer: the gate and promotion evidence
BASELINE_METRIC = "baseline_pass_rate"  # on a candidate run, production's rate on the same suite: promotion evidence

# --- model version tags (written by agent_model and agent_deployment) ---------------------------------------------
FINGERPRINT_TAG = "llmops.fingerprint"  # hash of the agent's code, config and prompts: a new version only on change
PREVIOUS_CHAMPION = "llmops.previous_champion"  # the version a deployment replaced: what agent_rollback serves again
DEPLOYED_AT = "llmops.deployed_at"  # when the version went live: for people
ENDPOINT_TAG = "llmops.endpoint_url"  # where the version serves: for people
SMOKE_TAG = "llmops.smoke_latency_ms"  # the smoke test's latency: for people

# --- Dagster run tags -------------------------------------------------------------------------------------------
WORKER_TAG = "llmops/worker"  # the CLI process that executes a run: run monitoring fails the run when it died
PROMPTS_DIGEST_TAG = "llmops/prompts_digest"  # the prompt files' digest on a run the prompt file sensor requested

# --- asset metadata keys -------------------------------------------------------------------------------------------
PROMPTS_DIGEST = "prompts_digest"  # metadata of prompt_registry: the files synced, so the file sensor's first tick knows them
NOTE = "note"  # why a materialization changed nothing (or what it skipped): the CLI prints it in its Results block
