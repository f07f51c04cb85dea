"""The end of a turn against the end of a sequence, on real tokenizers (tuneship.chat)."""

from transformers import AutoTokenizer

from tuneship.chat import end_of_turn_id, end_of_turn_warning, stop_token_ids

PLAIN_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def test_the_end_of_turn_is_the_token_the_template_puts_after_an_answer(default_base, short_base):
    default = AutoTokenizer.from_pretrained(default_base.path)
    assert default.convert_ids_to_tokens(end_of_turn_id(default)) == "<|im_end|>"
    short = AutoTokenizer.from_pretrained(short_base)
    assert short.convert_ids_to_tokens(end_of_turn_id(short)) == "<|im_end|>"
    assert short.eos_token == "<|endoftext|>"
    # A template that ends turns with plain text has no end-of-turn token to stop on.
    assert end_of_turn_id(short, PLAIN_TEMPLATE) is None


def test_a_base_whose_end_of_sequence_is_the_end_of_turn_needs_nothing_more(default_base):
    tokenizer = AutoTokenizer.from_pretrained(default_base.path)
    assert stop_token_ids(tokenizer, default_base.path) == [tokenizer.eos_token_id]
    assert end_of_turn_warning(tokenizer, default_base.path, None, "SmolLM2") is None


def test_a_base_that_does_not_end_sequences_at_the_end_of_turn_is_named(short_base):
    tokenizer = AutoTokenizer.from_pretrained(short_base)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tokenizer, short_base) == sorted([tokenizer.eos_token_id, end_of_turn])
    assert stop_token_ids(tokenizer, short_base, PLAIN_TEMPLATE) == [tokenizer.eos_token_id]
    warning = end_of_turn_warning(tokenizer, short_base, None, "short-base")
    assert warning is not None and "\n" not in warning
    assert f"<|im_end|> (id {end_of_turn})" in warning and "<|endoftext|> (id 0)" in warning
    assert "generation_config.json eos_token_id" in warning and "vLLM" in warning
