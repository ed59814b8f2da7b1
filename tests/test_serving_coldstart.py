"""POST /coldstart (issue 18): a draft plus the author's past posts, scored by a cold-start model folder."""

from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient

from notellm.data.coldstart import InstructionConfig, PromptWriter
from notellm.data.schema import empty_note, notes_to_table
from notellm.serving.app import create_app
from notellm.serving.components import ColdStartScorer

DRAFT = {"title": "周末去了雪山", "content": "风景太美了", "hashtags": ["旅行"]}
PAST = [{"title": "火锅分享", "content": "好吃", "hashtags": ["美食"], "category": ["美食"], "score": 2.5},
        {"title": "咖啡馆", "content": "安静", "hashtags": [], "category": [], "score": 4.0}]


@pytest.fixture(scope="module")
def coldstart_dir(tmp_path_factory):
    """A cold-start folder as `notellm coldstart sft` writes it: tiny-qwen3 with a (fresh) LoRA adapter."""
    from notellm.models.backbone import load_backbone
    from notellm.models.coldstart import ColdStartModelConfig, write_coldstart
    from notellm.models.lora import LoraConfig, apply_lora

    out = tmp_path_factory.mktemp("coldstart") / "sft"
    out.mkdir()
    mcfg, lora = ColdStartModelConfig(backbone="tiny-qwen3", max_length=256), LoraConfig()
    model, _ = load_backbone("tiny-qwen3", seed=0)
    write_coldstart(apply_lora(model, lora, task_type="CAUSAL_LM"), mcfg, lora, out, {"stage": "sft"}, "float32")
    return out


@pytest.fixture(scope="module")
def scorer(coldstart_dir):
    rows = [{**empty_note(f"a{i}"), "author_id": "alice", "title": f"旧帖{i}", "likes": 10 * i,
             "published_at": datetime(2026, 1, 1 + i, tzinfo=timezone.utc)} for i in range(3)]
    return ColdStartScorer(coldstart_dir, "en", notes=notes_to_table(rows))


def test_coldstart_endpoint_answers_what_the_model_answers_to_the_training_prompt(scorer, coldstart_dir):
    from notellm.evaluation.numbers import parse_number
    from notellm.inference.coldstart import ColdStartPredictor

    with TestClient(create_app(coldstart=scorer)) as c:
        body = c.post("/coldstart", json={"note": DRAFT, "past_posts": PAST}).json()
    # the prompt the training data would have written for these posts, answered by a fresh load of the folder
    rows = [{**empty_note(f"p{i}"), **{k: v for k, v in p.items() if k != "score"}} for i, p in enumerate(PAST)]
    rows.append({**empty_note("d"), **DRAFT})
    prompt = PromptWriter(notes_to_table(rows), InstructionConfig(include_user_id=False)).prompt(
        "", [0, 1], [2.5, 4.0], 2)
    assert "post 1 is 2.50" in prompt and "火锅分享" in prompt and "周末去了雪山" in prompt
    expected = ColdStartPredictor(str(coldstart_dir)).answers([prompt])[0]
    assert body["answer"] == expected and body["score"] == parse_number(expected)
    assert body["past_posts"] == 2 and body["model"] == "sft"


def test_an_author_id_is_resolved_from_the_served_notes(scorer):
    past = scorer.author_posts("alice")
    assert [p["title"] for p in past] == ["旧帖0", "旧帖1", "旧帖2"]  # oldest first
    assert [round(p["score"], 4) for p in past] == [0.0, 2.3979, 3.0445]  # ln(likes + 1)
    with TestClient(create_app(coldstart=scorer)) as c:
        assert c.post("/coldstart", json={"note": DRAFT, "author_id": "alice"}).json()["past_posts"] == 3
        unknown = c.post("/coldstart", json={"note": DRAFT, "author_id": "bob"})
        assert unknown.status_code == 404 and "past_posts" in unknown.json()["detail"]
        neither = c.post("/coldstart", json={"note": DRAFT})
        assert neither.status_code == 422 and "past_posts" in neither.json()["detail"][0]["msg"]
        bad = c.post("/coldstart", json={"note": DRAFT, "past_posts": [{**PAST[0], "score": "high"}]})
        assert bad.status_code == 422 and bad.json()["field"] == "past_posts.0.score"
    with TestClient(create_app()) as c:
        off = c.post("/coldstart", json={"note": DRAFT, "past_posts": PAST})
        assert off.status_code == 503 and "--coldstart-model" in off.json()["detail"]
