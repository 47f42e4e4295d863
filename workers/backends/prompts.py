"""Turn a GenerationRequest into what a model reads: chat messages, or a plain completion prompt.

Instruction-tuned models get chat messages and apply their own chat template. Base models (no
chat template, e.g. Gemma-3-270M) continue text, so a question is framed as the next item of a
short few-shot Question/Answer list: the examples teach the answer's shape (short, no preamble)
and the stop sequences end the answer where the model would start inventing the next question.
The examples deliberately avoid the facts our tests ask about, so a pass means the model knew.
"""
from __future__ import annotations

from scheduler.errors import BackendError
from workers.backends.base import GenerationRequest

Message = dict[str, str]

COMPLETION_HEADER = "Answer each question briefly and correctly."
# Chosen by trying variants on Gemma-3-270M: a person, a sum and a place (in this order) gave the
# most right answers on ten short questions; "Answer: The capital of Japan is Tokyo." style
# examples made it ramble, and examples without a sum made it answer "2+2" with "2".
COMPLETION_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
    ("What is 3+5?", "8."),
    ("What is the capital of Japan?", "Tokyo."),
)
# A blank line or a new "Question:" means the answer is over.
COMPLETION_STOP: tuple[str, ...] = ("\n\n", "\nQuestion:")

_ROLES = ("system", "user", "assistant")


def request_messages(request: GenerationRequest, system_prompt: str | None) -> list[Message]:
    """The conversation for ``request``: its messages (they win over ``prompt``) or its prompt as
    one user turn, with ``system_prompt`` first unless the messages bring their own system turn."""
    if request.messages:
        messages = [_checked(m) for m in request.messages]
    elif request.prompt:
        messages = [{"role": "user", "content": request.prompt}]
    else:
        raise BackendError(f"job {request.job_id}: the request has neither a prompt nor messages")
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def completion_prompt(messages: list[Message]) -> str:
    """Flatten a conversation into the few-shot Question/Answer prompt for a base model.

    System turns become instructions under the header; user/assistant turns become Question/Answer
    pairs after the examples. The prompt ends with "Answer:" (or the assistant's partial answer,
    which the model then continues).
    """
    instructions = [COMPLETION_HEADER] + [m["content"].strip() for m in messages if m["role"] == "system"]
    parts = [" ".join(instructions)]
    parts += [f"Question: {q}\nAnswer: {a}" for q, a in COMPLETION_EXAMPLES]
    turn: list[str] = []
    for message in messages:
        content = message["content"].strip()
        if message["role"] == "user":
            if turn:  # two user turns in a row: the first one got no answer
                parts.append("\n".join(turn))
            turn = [f"Question: {content}"]
        elif message["role"] == "assistant":
            turn.append(f"Answer: {content}")
            parts.append("\n".join(turn))
            turn = []
    if turn:
        parts.append("\n".join(turn) + "\nAnswer:")
    elif messages and messages[-1]["role"] == "assistant":
        return "\n\n".join(parts)  # continue the assistant's partial answer in place
    else:
        raise BackendError("the conversation has no user turn to answer")
    return "\n\n".join(parts)


def _checked(message: dict[str, str]) -> Message:
    role, content = message.get("role"), message.get("content")
    if role not in _ROLES or not isinstance(content, str):
        raise BackendError(
            f"bad chat message {message!r}: needs a role in {_ROLES} and a string content"
        )
    return {"role": role, "content": content}
