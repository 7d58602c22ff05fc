"""Template check with the real SmolLM2 tokenizer (tiny_llama_dir): passes on its template, fails
with the rendered text on a template that drops the end-of-turn token or shifts the mask."""

import pytest

from peftkit.data.template import MARK_CLOSE, MARK_OPEN, check_templates, stop_token_ids
from peftkit.errors import DataError

CHAT = {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                     {"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue"}]}


SYSTEM_CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                            {"role": "assistant", "content": "4"}]}


@pytest.fixture
def tok(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def test_smollm2_template_masks_exactly_the_answer_and_end_of_turn(tok, tiny_llama_dir):
    stops = stop_token_ids(tok, tiny_llama_dir)
    assert tok.convert_ids_to_tokens(sorted(stops)) == ["<|im_end|>"]
    shown = check_templates({"train": [(CHAT, "f.jsonl:1")], "val": [(SYSTEM_CHAT, "f.jsonl:2")]},
                            "chat", None, tok, stops)
    assert [s.split for s in shown] == ["train", "val"] and shown[0].rows_checked == 1
    marked = shown[0].marked
    assert marked.endswith(f"{MARK_OPEN}Blue<|im_end|>\n{MARK_CLOSE}")
    assert "Hello!<|im_end|>" in marked.split(MARK_OPEN)[0]  # earlier turn: context, ends with the stop token
    assert shown[1].marked.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    ext = check_templates({"test": [({"input": "mail", "output": "{}"}, "e:1")]}, "extraction", "Extract.", tok, stops)
    assert ext[0].marked.endswith(f"assistant\n{MARK_OPEN}{{}}<|im_end|>\n{MARK_CLOSE}") and "Extract." in ext[0].marked
    pref = check_templates({"train": [({"prompt": "Yes?", "chosen": "Yes", "rejected": "No"}, "p:1")]},
                           "preference", None, tok, stops)
    assert pref[0].marked.endswith(f"{MARK_OPEN}No<|im_end|>\n{MARK_CLOSE}")
    plain = check_templates({"train": [({"prompt": "2+2=", "completion": " 4"}, "c:1")]}, "completion", None, tok, stops)
    assert plain[0].marked == f"2+2={MARK_OPEN} 4<|im_end|>{MARK_CLOSE}"
    assert check_templates({"train": [({"text": "x", "label": "a"}, "c:1")]}, "classification", None, tok, stops) == []


def test_template_without_end_of_turn_is_an_error_with_the_rendered_text(tok):
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(DataError) as info:
        check_templates({"train": [(CHAT, "f.jsonl:7")]}, "chat", None, tok, stop_token_ids(tok))
    msg = str(info.value)
    assert msg.startswith("template check failed at f.jsonl:7 (train): assistant turn messages[1] does not end with")
    assert "'<|im_end|>'" in msg and "Rendered:\n<|im_start|>user\nHi there\n<|im_start|>assistant\nHello!" in msg


def test_generation_prompt_that_is_not_a_prefix_is_an_error(tok):
    # the prompt alone ends with a marker the full conversation does not contain: the mask would be misplaced
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\nThink:{% endif %}")
    with pytest.raises(DataError, match=r"the prompt rendered alone is not a prefix .*Rendered:\n<\|im_start\|>user"):
        check_templates({"train": [(CHAT, "f.jsonl:1")]}, "chat", None, tok, stop_token_ids(tok))


def test_answer_containing_the_stop_token_is_caught(tok):
    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a<|im_end|>b"}]}
    with pytest.raises(DataError, match=r"f.jsonl:3 .*the loss mask covers 'a' before the end-of-turn token"):
        check_templates({"train": [(bad, "f.jsonl:3")]}, "chat", None, tok, stop_token_ids(tok))


def test_special_tokens_in_text_are_row_problems(tok):
    from peftkit.data.template import special_token_problems

    bad = {"messages": [{"role": "user", "content": "end<|im_start|>system"}, {"role": "assistant", "content": "ok"}]}
    assert special_token_problems(bad, tok) == [
        "messages[0].content: contains the special token '<|im_start|>', which the template uses as a marker"]
    assert special_token_problems({"input": "plain", "output": "{}"}, tok) == []
