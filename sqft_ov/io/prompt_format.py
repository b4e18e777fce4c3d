"""How a fine-tuned model expects its prompts, carried from training to the deployed IR.

`openvino_genai.LLMPipeline(ir).generate(prompt)` wraps a string prompt in the tokenizer's chat template by
default (`GenerationConfig.apply_chat_template` is True and genai does not read it from generation_config.json).
A model fine-tuned on plain prompts then answers another question than the one it learned: on the embedded
task the quickstart's LoRA IR answers "20. #### 20" for a problem whose answer it gets right without the
template. So training marks the model's config (`sqft_chat_template`, saved in config.json by merge) and
export drops the chat template from the IR's tokenizer of a model trained without one: genai's default call
then prompts it as it was trained.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqft_ov.errors import ConfigError

CHAT_TEMPLATE_KEY = "sqft_chat_template"  # config.json: whether fine-tuning wrapped the prompts in the template
CHOICES = ("auto", "keep", "drop")
TOKENIZER_IR = "openvino_tokenizer.xml"


def mark_prompt_format(model_config, chat_template: bool) -> None:
    setattr(model_config, CHAT_TEMPLATE_KEY, bool(chat_template))


def trained_with_chat_template(model_config) -> bool | None:
    """True / False as fine-tuning prompted the model; None for a model sqft-ov did not fine-tune."""
    value = getattr(model_config, CHAT_TEMPLATE_KEY, None)
    return None if value is None else bool(value)


def should_drop(choice: str, trained: bool | None) -> bool:
    """`auto`: drop the template only from a model known to be trained on plain prompts (else keep, as
    optimum-cli does)."""
    if choice not in CHOICES:
        raise ConfigError(f"unknown --chat-template {choice!r}: choose {', '.join(CHOICES)}")
    return choice == "drop" or (choice == "auto" and trained is False)


def drop_chat_template(ir_dir: Path) -> bool:
    """Remove the chat template from an IR folder's tokenizer (its rt_info, chat_template.jinja and
    tokenizer_config.json), where genai and transformers look for it; True if there was one."""
    import xml.etree.ElementTree as ElementTree

    found = False
    xml = ir_dir / TOKENIZER_IR
    if xml.is_file():
        tree = ElementTree.parse(xml)
        rt_info = tree.getroot().find("rt_info")
        templates = [] if rt_info is None else rt_info.findall("chat_template")
        for node in templates:
            rt_info.remove(node)
        if templates:
            found = True
            tree.write(xml, encoding="utf-8", xml_declaration=True)
    jinja = ir_dir / "chat_template.jinja"
    if jinja.is_file():
        jinja.unlink()
        found = True
    config = ir_dir / "tokenizer_config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        if data.pop("chat_template", None) is not None:
            found = True
            config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return found
