"""The demo corpus: determinism, schema, and the properties models are meant to learn from it, measured."""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy.stats import spearmanr

from notellm.data.demo import CATEGORIES, generate_demo, platform_body, vocabulary_strings, write_demo
from notellm.data.schema import EVENT_SCHEMA, NOTE_SCHEMA, read_events, read_notes
from notellm.data.text import parse_hashtags, strip_hashtags
from notellm.errors import ConfigError


@pytest.fixture(scope="module")
def corpus():
    return generate_demo(2000, seed=3)


def _note_index(corpus) -> dict[str, int]:
    return {note_id: i for i, note_id in enumerate(corpus.notes.column("note_id").to_pylist())}


def test_same_seed_gives_identical_tables_and_another_seed_differs():
    a, b = generate_demo(300, seed=7), generate_demo(300, seed=7)
    assert a.notes.equals(b.notes) and a.events.equals(b.events) and a.truth.equals(b.truth)
    c = generate_demo(300, seed=8)
    titles_a, titles_c = a.notes.column("title").to_pylist(), c.notes.column("title").to_pylist()
    assert np.mean([x == y for x, y in zip(titles_a, titles_c)]) < 0.05
    assert not a.events.equals(c.events)
    # the notes do not depend on how many users click on them
    assert generate_demo(300, seed=7, n_users=10).notes.equals(a.notes)


def test_tables_follow_the_schemas_and_the_vocabulary(corpus):
    notes, events = corpus.notes, corpus.events
    assert notes.schema.equals(NOTE_SCHEMA) and events.schema.equals(EVENT_SCHEMA)
    assert notes.num_rows == 2000 and pc.count_distinct(notes.column("note_id")).as_py() == 2000
    assert len(CATEGORIES) == 20 and all(2 <= len(c[4]) <= 3 for c in CATEGORIES.values())
    valid_pairs = {(cat, sub) for cat, spec in CATEGORIES.items() for sub in spec[4]}
    categories = notes.column("category").to_pylist()
    assert all(len(c) == 2 and tuple(c) in valid_pairs for c in categories)
    assert len({c[0] for c in categories}) == 20
    words = vocabulary_strings()
    assert all(re.fullmatch(r"\w{1,16}", w) for w in words["tags"] + words["topics"])  # survive `#(\w+)#`
    tags = notes.column("hashtags").to_pylist()
    assert all(len(t) <= 10 and len(set(t)) == len(t) for t in tags)
    assert 0.06 < np.mean([len(t) == 0 for t in tags]) < 0.14  # 10% of notes carry no tag
    assert 4.0 < np.mean([len(t) for t in tags]) < 6.0           # 0.9 * (1 + 9 * 0.45) = 4.5
    # Xiaohongshu-style ids: 24 hex digits, the first 8 being the publish time
    published = notes.column("published_at").cast(pa.int64()).to_pylist()
    for note_id, ts in zip(notes.column("note_id").to_pylist()[:50], published):
        assert re.fullmatch(r"[0-9a-f]{24}", note_id) and int(note_id[:8], 16) == ts
    assert published == sorted(published)
    assert all(json.loads(x)["source"] == "demo" for x in notes.column("extra").to_pylist())


def test_platform_body_parses_back_into_hashtags_and_content(corpus):
    assert platform_body(pa.array(["正文[哭惹R]"]), pa.array([["穿搭", "ootd"]])).to_pylist() == [
        "正文[哭惹R]\n#穿搭[话题]# #ootd[话题]#"]
    assert platform_body(pa.array(["正文"]), pa.array([[]], pa.list_(pa.string()))).to_pylist() == ["正文"]
    notes = corpus.notes
    raw = platform_body(notes.column("content"), notes.column("hashtags")).to_pylist()
    assert [parse_hashtags(r) for r in raw] == notes.column("hashtags").to_pylist()
    assert [strip_hashtags(r) for r in raw] == notes.column("content").to_pylist()
    emoji = sum(bool(re.search(r"\[[^\]]+R\]", c)) for c in notes.column("content").to_pylist())
    assert emoji > 1000  # platform emoji kept as text in most bodies


def test_notes_of_one_topic_share_words_but_are_not_copies(corpus):
    from sklearn.feature_extraction.text import TfidfVectorizer

    notes, truth = corpus.notes, corpus.truth
    texts = [f"{t} {c}" for t, c in zip(notes.column("title").to_pylist(), notes.column("content").to_pylist())]
    assert len(set(notes.column("content").to_pylist())) == len(texts)
    vectors = TfidfVectorizer(analyzer="char", ngram_range=(2, 2)).fit_transform(texts)
    cosine = (vectors @ vectors.T).toarray()
    np.fill_diagonal(cosine, np.nan)
    topic, cat = truth.column("topic_id").to_numpy(), truth.column("category_id").to_numpy()
    same_topic = np.nanmean(cosine[topic[:, None] == topic[None, :]])
    other_category = np.nanmean(cosine[cat[:, None] != cat[None, :]])
    assert same_topic > 0.3 and other_category < 0.08 and same_topic > 5 * other_category
    assert np.nanmax(cosine) < 0.95


def test_consecutive_clicks_share_a_subcategory_far_more_than_random_pairs(corpus):
    index = _note_index(corpus)
    sub = corpus.truth.column("subcategory_id").to_numpy()
    clicked = sub[[index[n] for n in corpus.events.column("note_id").to_pylist()]]
    session = np.array(corpus.events.column("session_id").to_pylist())
    within = session[1:] == session[:-1]
    co_clicked_same = np.mean(clicked[1:][within] == clicked[:-1][within])
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(clicked), (2, 20000))
    random_same = np.mean(clicked[a] == clicked[b])
    # topic 45% + subcategory 25% stay in it by construction, plus chance: about 0.75
    assert 0.65 < co_clicked_same < 0.85
    assert random_same < 0.06 and co_clicked_same > 10 * random_same


def test_every_event_clicks_an_existing_note_after_it_was_published(corpus):
    index = _note_index(corpus)
    events = corpus.events
    assert set(events.column("note_id").to_pylist()) <= set(index)
    published = corpus.notes.column("published_at").cast(pa.int64()).to_numpy()
    ts = events.column("timestamp").cast(pa.int64()).to_numpy()
    clicked_published = published[[index[n] for n in events.column("note_id").to_pylist()]]
    assert np.all(ts >= clicked_published + 60)
    users_per_session = defaultdict(set)
    for user, session in zip(events.column("user_id").to_pylist(), events.column("session_id").to_pylist()):
        users_per_session[session].add(user)
    assert all(len(u) == 1 for u in users_per_session.values())
    # a session's clicks are consecutive rows, in time order
    session = events.column("session_id").to_pylist()
    starts = [i for i in range(len(session)) if i == 0 or session[i] != session[i - 1]]
    assert len(starts) == len(users_per_session)
    within = np.array(session[1:]) == np.array(session[:-1])
    assert np.all(np.diff(ts)[within] >= 15)
    assert pc.count_distinct(events.column("user_id")).as_py() == 500  # default n_users = 2000 // 4


def test_quality_is_the_documented_formula_and_drives_engagement(corpus):
    notes, truth = corpus.notes, corpus.truth
    quality = truth.column("quality").to_numpy()
    weights = np.log([CATEGORIES[c[0]][0] for c in notes.column("category").to_pylist()])
    all_logs = np.log([spec[0] for spec in CATEGORIES.values()])
    pop = (weights - all_logs.mean()) / all_logs.std()
    titles = notes.column("title").to_pylist()
    digit = np.array([bool(re.search(r"\d", t)) for t in titles], dtype=float)
    emoji = np.array([bool(re.search(r"\[[^\[\]]+\]|[✨💕🔥😭👍🌟💯]", t)) for t in titles], dtype=float)
    n_tags = np.array([len(t) for t in notes.column("hashtags").to_pylist()], dtype=float)
    title_len = np.array([len(t) for t in titles], dtype=float)
    formula = (0.8 * truth.column("author_skill").to_numpy() + 0.4 * pop + 0.3 * digit + 0.25 * emoji
               + 0.12 * n_tags - 0.01 * n_tags**2 - 0.04 * np.abs(title_len - 16))
    noise = quality - formula
    assert abs(noise.mean()) < 0.05 and 0.55 < noise.std() < 0.65  # N(0, 0.6)
    extra = [json.loads(x) for x in notes.column("extra").to_pylist()]
    assert np.allclose([e["quality"] for e in extra], quality, atol=5e-5)
    assert [e["topic_id"] for e in extra] == truth.column("topic_id").to_pylist()

    likes = notes.column("likes").to_numpy()
    wlaes = (np.log1p(likes) + 0.5 * np.log1p(notes.column("collects").to_numpy())
             + 0.2 * np.log1p(notes.column("comments").to_numpy()))
    assert spearmanr(quality, likes).statistic > 0.7
    assert spearmanr(quality, wlaes).statistic > 0.7
    assert np.percentile(likes, 99) > 30 * np.median(likes)  # heavy tail, as real notes


def test_authors_are_power_law_and_their_past_predicts_their_future(corpus):
    notes = corpus.notes
    by_author = defaultdict(list)
    for i, author in enumerate(notes.column("author_id").to_pylist()):
        by_author[author].append(i)  # rows are in publish order
    counts = np.sort([len(v) for v in by_author.values()])[::-1]
    assert counts[: len(counts) // 10].sum() > 0.3 * counts.sum()  # top 10% of authors write > 30%
    assert np.median(counts) <= 6
    log_likes = np.log1p(notes.column("likes").to_numpy())
    past, future = [], []
    for rows in by_author.values():
        if len(rows) >= 4:
            half = len(rows) // 2
            past.append(log_likes[rows[:half]].mean())
            future.append(log_likes[rows[half:]].mean())
    assert len(past) > 50 and spearmanr(past, future).statistic > 0.5
    coarse = [c[0] for c in notes.column("category").to_pylist()]
    home_share = np.mean([max(Counter(coarse[i] for i in rows).values()) / len(rows)
                          for rows in by_author.values() if len(rows) >= 10])
    assert home_share > 0.75  # 85% of an author's notes are in the home category (plus chance)


def test_write_demo_round_trips(tmp_path, corpus):
    paths = write_demo(corpus, tmp_path / "demo")
    assert {p.name for p in (tmp_path / "demo").iterdir()} == {"notes.parquet", "events.parquet", "truth.parquet",
                                                               "demo.json"}
    assert read_notes(paths["notes"]).equals(corpus.notes)
    assert read_events(paths["events"]).cast(EVENT_SCHEMA).equals(corpus.events)  # parquet stores s as ms
    manifest = json.loads(paths["manifest"].read_text(encoding="utf-8"))
    assert manifest["notes"] == 2000 and manifest["events"] == corpus.events.num_rows and manifest["seed"] == 3


def test_cli_writes_the_same_corpus_as_the_api(tmp_path):
    from typer.testing import CliRunner

    from notellm.cli import app

    result = CliRunner().invoke(app, ["data", "demo", "--notes", "200", "--out", str(tmp_path), "--seed", "5",
                                      "--users", "30"])
    assert result.exit_code == 0, result.output
    expected = generate_demo(200, n_users=30, seed=5)
    assert read_notes(tmp_path / "notes.parquet").equals(expected.notes)
    assert read_events(tmp_path / "events.parquet").cast(EVENT_SCHEMA).equals(expected.events)


def test_bad_arguments_are_refused_and_zero_users_give_no_events():
    with pytest.raises(ConfigError):
        generate_demo(0)
    with pytest.raises(ConfigError, match="start"):
        generate_demo(10, start="yesterday")
    with pytest.raises(TypeError):
        generate_demo(10, 3)  # a seed given by position would silently become a user count
    empty = generate_demo(10, n_users=0)
    assert empty.events.num_rows == 0 and empty.events.schema.equals(EVENT_SCHEMA)


def test_scale_1k_notes_under_1s_and_10k_under_3s():
    generate_demo(50)  # vocabulary compiled once
    began = time.perf_counter()
    generate_demo(1000)
    assert time.perf_counter() - began < 1.0
    began = time.perf_counter()
    corpus = generate_demo(10_000)
    assert time.perf_counter() - began < 3.0
    assert corpus.notes.num_rows == 10_000 and corpus.events.num_rows > 20_000
