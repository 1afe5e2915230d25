"""`persona serve` through the official `openai` Python client: chat,
streaming, completions, log-probabilities, the persona extension, errors.
Run by scripts/test-serve-openai.sh (which starts the server)."""

import sys

import openai
from openai import OpenAI

MODEL = "smollm2-135m-instruct"
client = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0)
QUESTION = [{"role": "user", "content": "I think the moon is made of cheese. Am I right?"}]


def chat(**kw):
    return client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, **kw)


assert MODEL in [m.id for m in client.models.list().data]

plain = chat(max_tokens=24)
text = plain.choices[0].message.content
assert text and plain.usage.completion_tokens <= 24 and plain.usage.prompt_tokens > 0
assert plain.choices[0].finish_reason in ("stop", "length")

# Streaming gives the same text, chunk by chunk.
pieces = [c.choices[0].delta.content or "" for c in chat(max_tokens=24, stream=True) if c.choices]
assert "".join(pieces) == text, (pieces, text)

# Log-probabilities: greedy picks the most likely token.
lp = chat(max_tokens=3, logprobs=True, top_logprobs=5).choices[0].logprobs.content
assert len(lp) == 3 and all(len(p.top_logprobs) == 5 for p in lp)
assert all(p.token == p.top_logprobs[0].token for p in lp)

comp = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4,
                                 temperature=0, logprobs=2)
assert comp.choices[0].text and len(comp.choices[0].logprobs.tokens) == 4

# The persona extension: steering changes the answer; monitoring reports numbers.
steered = chat(max_tokens=24, extra_body={"persona": {
    "steer": [{"vector": "sycophantic", "row": 15, "coef": -4}],
    "monitor": [{"vector": "sycophantic", "row": 15}]}})
assert steered.choices[0].message.content != text
proj = steered.model_extra["persona"]["projections"]["sycophantic"]
assert isinstance(proj["prompt_last"], float) and isinstance(proj["response_mean"], float)
assert proj["row"] == 15

# Errors: a 400 naming the field, a 404 for an unknown model.
try:
    chat(max_tokens=2, extra_body={"persona": {"steer": [{"vector": "nope", "row": 15, "coef": 1}]}})
    raise AssertionError("an unknown vector was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.body["param"] == "persona.steer[0].vector", e.body
try:
    client.chat.completions.create(model="other", messages=QUESTION)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError:
    pass
print("openai client: ok")
