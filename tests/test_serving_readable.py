"""Popularity a creator can read (issue 18): percentile among indexed notes, interval from held-out error."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from helpers.toy import toy_notes
from notellm.data.schema import notes_to_table
from notellm.inference.generate import KnnTagger
from notellm.serving.app import create_app
from notellm.serving.readable import PopularityContext
from test_serving import RidgePopularity

HELDOUT = {"notes": 40, "abs_error_quantiles": {"50": 0.2, "80": 0.5, "90": 0.7, "95": 0.9},
           "residual_quantiles": {"5": -0.8, "10": -0.6, "90": 0.4, "95": 0.7},
           "score_quantiles": list(np.linspace(0.0, 10.0, 101))}


class ReadablePopularity(RidgePopularity):
    """The Ridge model of test_serving, with what a trained folder carries: held-out error and target weights."""
    heldout = HELDOUT
    target_weights = {"likes": 1.0}


def notes_with_likes():
    rows = [dict(r, likes=i) for i, r in enumerate(toy_notes())]  # ln(likes+1) = the target of the notes
    return rows, notes_to_table(rows)


def test_percentile_is_the_share_of_indexed_notes_below_the_score():
    rows, table = notes_with_likes()
    context = PopularityContext.build(ReadablePopularity(), table)
    targets = np.log1p([r["likes"] for r in rows])
    score = float(np.log1p(20))  # above 20 notes (likes 0..19), equal to one
    out = context.explain(score, "美食")
    assert out["percentile"]["overall"] == pytest.approx(100 * (20 + 0.5) / 32, abs=0.1)
    food = np.array([t for t, r in zip(targets, rows) if r["category"][0] == "美食"])
    below = (food < score).sum() + 0.5 * (food == score).sum()
    assert out["percentile"]["category"] == {"name": "美食", "percentile": pytest.approx(100 * below / len(food), abs=0.1),
                                             "notes": len(food)}
    assert out["interval"] == {"low": pytest.approx(score - 0.6), "high": pytest.approx(score + 0.4), "coverage": 0.8,
                               "margin": 0.5, "from": "the model's error on 40 held-out notes"}


def test_without_a_notes_table_the_held_out_notes_are_the_reference():
    out = PopularityContext.build(ReadablePopularity(), None).explain(2.5)
    assert out["percentile"]["overall"] == pytest.approx(25.0, abs=0.6) and "held-out" in out["percentile"]["among"]
    assert PopularityContext.build(RidgePopularity(), None) is None  # a model without held-out error: nothing


def test_the_popularity_endpoint_says_where_the_score_falls(world):  # noqa: F811
    rows, table = notes_with_likes()
    app = create_app(index=world["index"], embedder=world["embedder"], notes=table,
                     tagger=KnnTagger(rows, k=10, n_tags=3), popularity=ReadablePopularity())
    note = {"title": "火锅分享", "content": "今天吃到一家超好吃的火锅，味道绝了", "hashtags": ["美食"]}
    with TestClient(app) as c:
        body = c.post("/popularity", json={"note": note}).json()
    assert body["category"] == ["美食", "火锅"]
    expected = PopularityContext.build(ReadablePopularity(), table).explain(body["score"], "美食")
    assert body["percentile"] == expected["percentile"] and body["percentile"]["category"]["name"] == "美食"
    assert body["interval"]["low"] < body["score"] < body["interval"]["high"]


from test_serving import world  # noqa: E402, F401  (the shared module fixture)
