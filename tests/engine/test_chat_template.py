"""Ring 2: the chat route's prompt is what transformers' apply_chat_template makes of the same
messages, text and token ids, with the GGUF's own template (the tokenizer comes from the test
checkpoint, which transformers builds from the same GGUF)."""
import pytest

from app import chat
from app.openai_schemas import ChatMessage
from tests.fixtures.hf_checkpoint import make_hf_checkpoint

pytestmark = [pytest.mark.engine, pytest.mark.slow]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],  # SmolLM2's template adds its own system message
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "naïve 日本語 🤖"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye <|im_end|> now"}],
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_hf_checkpoint())


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendered_prompt_is_transformers(engine, hf_tokenizer, messages, add_generation_prompt):
    template = engine.chat_template()
    assert template == hf_tokenizer.chat_template
    special = engine.special_tokens()
    assert (special["bos_token"], special["eos_token"]) == (hf_tokenizer.bos_token, hf_tokenizer.eos_token)
    ours = chat.render(template, [ChatMessage(**m) for m in messages], bos_token=special["bos_token"],
                       eos_token=special["eos_token"], add_generation_prompt=add_generation_prompt)
    theirs = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == theirs
    ids = hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                           return_dict=True)["input_ids"]
    assert engine.tokenize(ours, add_special=False, parse_special=True) == list(ids)
