"""The demo agent as an MLflow `ResponsesAgent`, logged as a model from code.

`mlflow.pyfunc.log_model(python_model=<this file>)` stores this file; loading the model runs it, and
`load_context` then reads the agent's prompts from MLflow's Prompt Registry at the alias in the model config
(`production` by default) — so a served model answers with the prompts that evaluations justified. Calls are
traced (ResponsesAgent traces `predict`), into the tracking store the serving process points at.
"""

from __future__ import annotations

import random
import uuid

import mlflow
from mlflow.pyfunc import ResponsesAgent
from mlflow.types.responses import ResponsesAgentRequest, ResponsesAgentResponse

from resources.agent.backends import backend_from_env
from resources.agent.demo_agent import DemoAgent
from resources.agent.prompts import AgentPrompts

INPUT_EXAMPLE = {"input": [{"role": "user", "content": "How do I refresh a dashboard?"}]}


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


class SupportAgent(ResponsesAgent):
    def __init__(self) -> None:
        self.agent: DemoAgent | None = None

    def load_context(self, context) -> None:
        config = getattr(context, "model_config", None) or {}
        prompts = AgentPrompts.from_registry(mlflow.MlflowClient(), config.get("prompt_alias", "production"))
        self.agent = DemoAgent(backend_from_env(), prompts)

    def predict(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:
        messages = [item.model_dump() if hasattr(item, "model_dump") else dict(item) for item in request.input]
        question = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        if not question.strip():
            raise ValueError("the request has no user message with text")
        run = self.agent.run(question, (), random.Random(question))
        return ResponsesAgentResponse(
            output=[self.create_text_output_item(text=run.answer or "Sorry, I could not answer that.",
                                                 id=f"msg_{uuid.uuid4().hex[:12]}")],
            custom_outputs={"prompt_versions": self.agent.prompts.versions, "sources": run.steps[0].outputs,
                            "failed": run.failed},
        )


mlflow.models.set_model(SupportAgent())
