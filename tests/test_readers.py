"""Readers into the Note / Event / Pair tables: small fixtures written here, the real shared datasets
(skipped when absent), every bad-input case, and `notellm data import` through the CLI."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import shared_dataset
from notellm.data.readers import (FORMATS, read_generic, read_hackernews, read_kuairec, read_mediacrawler,
                                  read_movielens, read_notellm_csv, read_qilin, read_report, read_source,
                                  read_weibo, summarize)
from notellm.data.schema import EVENT_SCHEMA, NOTE_SCHEMA, PAIR_SCHEMA, read_notes
from notellm.errors import DataError


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def by_id(table: pa.Table) -> dict[str, dict]:
    return {row["note_id"]: row for row in table.to_pylist()}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


# ------------------------------------------------------------------------------------------ fixtures
NOTELLM_NOTES = (
    "n1,我的周末,今天去海边玩了#旅行[话题]##海边[话题]#,img1,Travel@Beach@\n"
    'n2,"标题, 带逗号","第一行\n第二行 #美食[话题]#",img2,Food@\n'
    "n3,t3,纯文本,,Emotion@Other Emotions@\n"
)
NOTELLM_PAIRS = "n1,n2\nn2,n3\nn1,zz\nn3,n3\n"


@pytest.fixture
def notellm_files(tmp_path):
    write(tmp_path / "images" / "img1.jpg", "not really a jpeg")
    return write(tmp_path / "notes.csv", NOTELLM_NOTES), write(tmp_path / "pairs.csv", NOTELLM_PAIRS)


MOVIES = ("movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children\n"
          '2,"American President, The (1995)",Comedy|Drama|Romance\n3,La cravate (1957),(no genres listed)\n')
TAGS = ("userId,movieId,tag,timestamp\n1,1,Pixar,1\n2,1,pixar,2\n3,1,Fun,3\n4,1,Tom  Hanks,4\n5,1,zany,5\n"
        "5,2,b,6\n6,2,a,7\n")
RATINGS = ("userId,movieId,rating,timestamp\n2,1,4.0,100\n2,2,3.5,100\n2,3,3.0,50\n10,2,5.0,10\n10,1,4.5,10\n"
           "10,9,5.0,5\n1,3,5.0,200\n")


@pytest.fixture
def movielens_dir(tmp_path):
    folder = tmp_path / "ml"
    write(folder / "movies.csv", MOVIES)
    write(folder / "tags.csv", TAGS)
    write(folder / "ratings.csv", RATINGS)
    return folder


REC_DETAILS = (
    "[{'click': 1, 'collect': 0, 'comment': 0, 'like': 1, 'note_id': 'aa', 'note_idx': 0, 'page_time': 3.5, "
    "'position': 1, 'request_timestamp': 1732668760025, 'share': 0}\n"
    " {'click': 0, 'collect': 0, 'comment': 0, 'like': 0, 'note_id': 'bb', 'note_idx': 1, 'page_time': 0.0, "
    "'position': 2, 'request_timestamp': 1732668760026, 'share': 0}\n"
    " {'click': 1, 'collect': 0, 'comment': 0, 'like': 0, 'note_id': 'cc', 'note_idx': 99, 'page_time': nan, "
    "'position': 3, 'request_timestamp': 1732668761000, 'share': 0}]"
)
SEARCH_DETAILS = ("[{'click': 1.0, 'collect': 1.0, 'comment': 0.0, 'like': 0.0, 'note_id': 'bb', 'note_idx': 1, "
                  "'page_time': 2.0, 'position': 1.0, 'search_timestamp': 1732475484.0, 'share': 0.0}]")


@pytest.fixture
def qilin_dir(tmp_path):
    folder = tmp_path / "qilin"
    write(folder / "image" / "p" / "1.jpg", "x")
    write(folder / "notes.csv",
          "note_idx,note_title,note_content,note_type,taxonomy1_id,taxonomy2_id,taxonomy3_id,accum_like_num,"
          "accum_collect_num,accum_comment_num,share_num,imp_num,like_num,image_path,note_embedding\n"
          "0,标题0,正文#腊肠[话题]# ,2.0,t1,t2,,13022.0,7829.0,414.0,56.0,10672.0,81.0,"
          "\"['image/p/1.jpg' 'image/p/2.jpg']\",\"[ 0.1  0.2]\"\n"
          "1,标题1,正文1,1.0,t1,,,1.0,2.0,0.0,0.0,5.0,1.0,\"['image/p/3.jpg']\",\"[0.3]\"\n")
    write(folder / "recommendation_train.csv",
          f"user_idx,session_idx,request_idx,rec_result_details_with_idx\n7,70,700,\"{REC_DETAILS}\"\n")
    write(folder / "search_train.csv",
          f"query,user_idx,session_idx,search_idx,search_result_details_with_idx\n腊肠,8,80,800,\"{SEARCH_DETAILS}\"\n")
    return folder


# ------------------------------------------------------------------------------------------ NoteLLM CSV
def test_notellm_csv_notes_and_pairs(notellm_files, tmp_path):
    notes_csv, pairs_csv = notellm_files
    notes, pairs = read_notellm_csv(notes_csv, pairs_csv)
    assert notes.schema.names == NOTE_SCHEMA.names
    rows = by_id(notes)
    assert list(rows) == ["n1", "n2", "n3"]
    assert rows["n1"]["content"] == "今天去海边玩了"
    assert rows["n1"]["hashtags"] == ["旅行", "海边"]
    assert rows["n1"]["category"] == ["Travel", "Beach"]
    assert rows["n1"]["image_paths"] == [str((tmp_path / "images" / "img1.jpg").resolve())]
    assert rows["n2"]["title"] == "标题, 带逗号"
    assert rows["n2"]["content"] == "第一行\n第二行"
    assert rows["n2"]["hashtags"] == ["美食"]
    assert rows["n2"]["image_paths"] == []  # img2 is not on disk
    assert json.loads(rows["n2"]["extra"]) == {"imgid": "img2"}
    assert rows["n3"]["category"] == ["Emotion", "Other Emotions"]
    assert pairs.schema == PAIR_SCHEMA
    assert pairs.to_pylist() == [{"note_a": "n1", "note_b": "n2", "score": 1.0},
                                 {"note_a": "n2", "note_b": "n3", "score": 1.0}]
    report = read_report(pairs)
    assert report["skipped"] == {"pair of a note with itself": 1, "pair names a note that is not in the note table": 1}
    assert report["examples"]["pair names a note that is not in the note table"] == [f"{pairs_csv} row 3"]
    assert report["examples"]["pair of a note with itself"] == [f"{pairs_csv} row 4"]


def test_notellm_csv_pairs_unknown_note_error(notellm_files):
    with pytest.raises(DataError) as err:
        read_notellm_csv(*notellm_files, unknown_notes="error")
    assert err.value.row == 3 and "'zz'" in str(err.value) and "pairs.csv" in str(err.value)


def test_notellm_csv_without_pairs(notellm_files):
    notes, pairs = read_notellm_csv(notellm_files[0])
    assert notes.num_rows == 3 and pairs is None


# ------------------------------------------------------------------------------------------ Qilin
def test_qilin_fixture_notes(qilin_dir):
    notes, events = read_qilin(qilin_dir)
    rows = by_id(notes)
    note = rows["0"]
    assert note["title"] == "标题0" and note["content"] == "正文" and note["hashtags"] == ["腊肠"]
    assert note["category"] == ["t1", "t2"]
    assert (note["likes"], note["collects"], note["comments"], note["shares"], note["impressions"]) == (
        13022, 7829, 414, 56, 10672)
    assert note["image_paths"] == [str((qilin_dir / "image" / "p" / "1.jpg").resolve())]
    extra = json.loads(note["extra"])
    assert extra["note_type"] == "video" and extra["like_num"] == 81
    assert extra["image_path"] == ["image/p/1.jpg", "image/p/2.jpg"]
    assert "note_embedding" not in extra
    assert rows["1"]["category"] == ["t1"] and rows["1"]["image_paths"] == []


def test_qilin_fixture_events_skip_unknown_notes(qilin_dir):
    _, events = read_qilin(qilin_dir)
    assert events.schema.names[:4] == EVENT_SCHEMA.names
    got = [(e["user_id"], e["note_id"], e["timestamp"], e["session_id"], e["source"], e["request_id"], e["position"])
           for e in events.to_pylist()]
    assert got == [("7", "0", utc(2024, 11, 27, 0, 52, 40), "70", "recommendation_train", "700", 1),
                   ("8", "1", utc(2024, 11, 24, 19, 11, 24), "80", "search_train", "800", 1)]
    assert events.column("like").to_pylist() == [1, 0] and events.column("collect").to_pylist() == [0, 1]
    report = read_report(events)
    assert report["skipped"] == {"event names a note that is not in the note table": 1}
    assert report["examples"]["event names a note that is not in the note table"] == [
        f"{qilin_dir / 'recommendation_train.csv'} row 1 (note 99)"]


def test_qilin_differently_named_files(qilin_dir, tmp_path):
    other = tmp_path / "qilin_renamed"
    other.mkdir()
    (qilin_dir / "notes.csv").rename(other / "qilin_notes_2024.csv")
    (qilin_dir / "recommendation_train.csv").rename(other / "rec_sessions.csv")
    (qilin_dir / "search_train.csv").rename(other / "search_sessions.csv")
    with pytest.raises(DataError, match="--opt notes=FILE"):
        read_qilin(other)
    notes, events = read_qilin(other, notes="qilin_notes_2024.csv", sessions="rec_sessions.csv,search_sessions.csv")
    assert notes.column("note_id").to_pylist() == ["0", "1"]
    assert [(e["note_id"], e["source"]) for e in events.to_pylist()] == [("0", "rec_sessions"),
                                                                         ("1", "search_sessions")]
    result = read_source("qilin", other, notes=str(other / "qilin_notes_2024.csv"), sessions=["search_sessions.csv"])
    assert result.events.num_rows == 1
    with pytest.raises(DataError, match="does not exist"):
        read_qilin(other, notes="qilin_notes_2024.csv", sessions="missing.csv")


def test_qilin_fixture_events_keep_and_all_impressions(qilin_dir):
    _, kept = read_qilin(qilin_dir, unknown_notes="keep")
    assert kept.column("note_id").to_pylist() == ["0", "99", "1"]
    assert kept.column("page_time").to_pylist() == [3.5, None, 2.0]  # numpy's printed `nan`
    _, everything = read_qilin(qilin_dir, unknown_notes="keep", clicks_only=False)
    assert everything.column("note_id").to_pylist() == ["0", "1", "99", "1"]
    assert everything.column("click").to_pylist() == [1, 0, 1, 1]
    assert everything.column("seq").to_pylist() == [0, 1, 2, 3]
    with pytest.raises(DataError) as err:
        read_qilin(qilin_dir, unknown_notes="error")
    assert err.value.row == 1 and err.value.field == "note_id" and "'99'" in str(err.value)


def test_qilin_parquet_release_layout(tmp_path):
    """The Hugging Face release: Parquet shards per table, lists and structs instead of printed arrays."""
    folder = tmp_path / "Qilin"
    (folder / "notes").mkdir(parents=True)
    (folder / "recommendation_train").mkdir()
    pq.write_table(pa.table({"note_idx": [5, 6], "note_title": ["a", "b"], "note_content": ["x #t[话题]#", "y"],
                             "note_type": [1, 1], "image_path": [["i/1.jpg"], []],
                             "accum_like_num": [3.0, None]}), folder / "notes" / "train-0.parquet")
    details = [[{"click": 1, "like": 0, "collect": 0, "comment": 0, "share": 0, "note_idx": 6, "position": 1,
                 "page_time": 1.0, "request_timestamp": 1732668760025}]]
    pq.write_table(pa.table({"user_idx": [1], "session_idx": [2], "request_idx": [3],
                             "rec_result_details_with_idx": details}), folder / "recommendation_train" / "p.parquet")
    notes, events = read_qilin(folder)
    assert by_id(notes)["5"]["hashtags"] == ["t"] and by_id(notes)["5"]["likes"] == 3
    assert by_id(notes)["6"]["likes"] is None
    assert events.to_pylist()[0]["note_id"] == "6" and events.to_pylist()[0]["session_id"] == "2"


# ------------------------------------------------------------------------------------------ MediaCrawler
MEDIACRAWLER_HEADER = ("note_id,type,title,desc,time,last_update_time,user_id,liked_count,collected_count,"
                       "comment_count,share_count,ip_location,tag_list,last_modify_ts,note_url,image_list\n")


def mediacrawler_row(note_id="n1", liked="1.5万", desc="正文\ufeff#减脂[话题]#\ufeff \ufeff#健身[话题]#\ufeff"):
    return (f'{note_id},normal,标题,"{desc}",1717646493000,1717614039000,u1,{liked},10w+,2千,"1,024",上海,'
            f'"减脂,健身,长期坚持",1733000000000,https://www.xiaohongshu.com/explore/{note_id},'
            '"http://img/a.jpg,local.jpg"\n')


def test_mediacrawler_fixture(tmp_path):
    write(tmp_path / "local.jpg", "x")
    path = write(tmp_path / "xhs_note.csv", MEDIACRAWLER_HEADER + mediacrawler_row())
    note = read_mediacrawler(path).to_pylist()[0]
    assert (note["likes"], note["collects"], note["comments"], note["shares"]) == (15000, 100000, 2000, 1024)
    assert note["content"] == "正文" and note["hashtags"] == ["减脂", "健身"]
    assert note["published_at"] == utc(2024, 6, 6, 4, 1, 33) and note["author_id"] == "u1"
    assert note["image_paths"] == [str((tmp_path / "local.jpg").resolve())]
    extra = json.loads(note["extra"])
    assert extra["image_urls"] == ["http://img/a.jpg"]
    assert extra["tag_list"] == ["减脂", "健身", "长期坚持"]
    assert extra["ip_location"] == "上海" and extra["type"] == "normal"
    assert extra["crawled_at"] == "2024-11-30T20:53:20+00:00"  # last_modify_ts 1733000000000 ms
    assert extra["note_url"] == "https://www.xiaohongshu.com/explore/n1"


def test_mediacrawler_tag_list_when_desc_has_no_tags_and_jsonl(tmp_path):
    record = {"note_id": "j1", "title": "t", "desc": "没有标签", "time": 1717646493000, "liked_count": "3",
              "tag_list": "a,b"}
    path = write(tmp_path / "notes.jsonl", json.dumps(record, ensure_ascii=False) + "\n")
    note = read_mediacrawler(path).to_pylist()[0]
    assert note["hashtags"] == ["a", "b"] and note["likes"] == 3 and note["content"] == "没有标签"


def test_mediacrawler_count_that_is_not_a_number(tmp_path):
    path = write(tmp_path / "xhs.csv", MEDIACRAWLER_HEADER + mediacrawler_row() + mediacrawler_row("n2", "很多"))
    with pytest.raises(DataError) as err:
        read_mediacrawler(path)
    assert (err.value.row, err.value.field) == (2, "liked_count") and "'很多'" in str(err.value)


# ------------------------------------------------------------------------------------------ MovieLens
def test_movielens_fixture_notes(movielens_dir):
    notes, _ = read_movielens(movielens_dir)
    rows = by_id(notes)
    assert rows["1"]["content"] == ("Title: Toy Story (1995). Genres: Adventure, Animation, Children. "
                                    "Tags: #pixar #fun #tom_hanks #zany")
    assert rows["1"]["hashtags"] == ["pixar", "fun", "tom_hanks", "zany"]  # 2x pixar; ties alphabetical
    assert rows["1"]["category"] == ["Adventure"]
    assert rows["2"]["title"] == "American President, The (1995)"
    assert rows["2"]["content"] == "Title: American President, The (1995). Genres: Comedy, Drama, Romance. Tags: #a #b"
    assert rows["3"]["content"] == "Title: La cravate (1957). Genres: unknown."
    assert rows["3"]["category"] == ["unknown"] and rows["3"]["hashtags"] == []
    assert json.loads(rows["2"]["extra"]) == {"genres": ["Comedy", "Drama", "Romance"]}
    notes2, _ = read_movielens(movielens_dir, max_tags=2)
    assert by_id(notes2)["1"]["hashtags"] == ["pixar", "fun"]


def test_movielens_fixture_events_order_and_unknown_movie(movielens_dir):
    _, events = read_movielens(movielens_dir)
    got = [(e["user_id"], e["note_id"], int(e["timestamp"].timestamp()), e["seq"]) for e in events.to_pylist()]
    # numeric user order; per user (timestamp, seq); rating 3.0 dropped; movie 9 is not in movies.csv
    assert got == [("1", "3", 200, 6), ("2", "1", 100, 0), ("2", "2", 100, 1), ("10", "2", 10, 3), ("10", "1", 10, 4)]
    assert events.column("rating").to_pylist() == [5.0, 4.0, 3.5, 5.0, 4.5]
    assert events.schema.field("seq").type == pa.int64()
    report = read_report(events)
    assert report["skipped"] == {"event names a note that is not in the note table": 1}
    assert report["examples"]["event names a note that is not in the note table"] == [
        f"{movielens_dir / 'ratings.csv'} row 6 (note 9)"]
    _, high = read_movielens(movielens_dir, min_rating=4.5)
    assert high.column("note_id").to_pylist() == ["3", "2", "1"]


def test_movielens_unknown_movie_error_and_keep(movielens_dir):
    with pytest.raises(DataError) as err:
        read_movielens(movielens_dir, unknown_notes="error")
    assert (err.value.row, err.value.field) == (6, "note_id") and "ratings.csv" in str(err.value)
    _, kept = read_movielens(movielens_dir, unknown_notes="keep")
    assert kept.num_rows == 6


# ------------------------------------------------------------------------------------------ KuaiRec
KUAIREC = (
    "video_id,manual_cover_text,caption,topic_tag,first_level_category_id,first_level_category_name,"
    "second_level_category_id,second_level_category_name,third_level_category_id,third_level_category_name\n"
    '0,UNKNOWN,#搞笑 #热门 这真是完美搭配啊！,"[热门,搞笑,官方]",5,时尚,737,营销售卖,-124,UNKNOWN\n'
    "1,封面,第一行\n第二行 #美食,[],-124,UNKNOWN,-124,UNKNOWN,-124,UNKNOWN\n"  # unquoted line break
    "2,UNKNOWN,,[],8,颜值,-124,UNKNOWN,2434,景物摄影\n"
)


def test_kuairec_fixture(tmp_path):
    write(tmp_path / "kuairec_caption_category.csv", KUAIREC)
    write(tmp_path / "item_categories.csv", 'video_id,feat\n0,[5]\n1,"[1, 2]"\n')
    rows = by_id(read_kuairec(tmp_path))
    assert list(rows) == ["0", "1", "2"]
    assert rows["0"]["title"] == "" and rows["0"]["content"] == "这真是完美搭配啊！"
    assert rows["0"]["hashtags"] == ["搞笑", "热门", "官方"]  # caption order, then topic_tag's others
    assert rows["0"]["category"] == ["时尚", "营销售卖"]
    assert rows["1"]["title"] == "封面" and rows["1"]["content"] == "第一行\n第二行"
    assert rows["1"]["hashtags"] == ["美食"] and rows["1"]["category"] == []
    assert rows["2"]["category"] == ["颜值"]  # cut at the first missing level
    assert json.loads(rows["1"]["extra"])["feat"] == [1, 2]
    assert "feat" not in json.loads(rows["2"]["extra"])


# ------------------------------------------------------------------------------------------ Hacker News
def test_hackernews_fixture(tmp_path):
    path = write(tmp_path / "hn.csv", "\ufeffid,title,url,num_points,num_comments,author,created_at\n"
                 "1,Show HN: x,http://www.example.com/a,10,2,alice,1/15/2016 10:00\n"
                 "2,Ask HN: y,,3,0,bob,7/4/2016 10:05\n")
    rows = by_id(read_hackernews(path))
    assert rows["1"]["published_at"] == utc(2016, 1, 15, 15, 0)  # US Eastern, winter
    assert rows["2"]["published_at"] == utc(2016, 7, 4, 14, 5)  # summer time
    assert (rows["1"]["likes"], rows["1"]["comments"], rows["1"]["author_id"]) == (10, 2, "alice")
    assert rows["1"]["content"] == "http://www.example.com/a" and rows["2"]["content"] == ""
    assert json.loads(rows["1"]["extra"])["domain"] == "example.com"


def test_hackernews_bad_time(tmp_path):
    path = write(tmp_path / "hn.csv", "id,title,url,num_points,num_comments,author,created_at\n"
                 "1,a,,1,0,x,1/15/2016 10:00\n2,b,,1,0,x,2016-13-45\n")
    with pytest.raises(DataError) as err:
        read_hackernews(path)
    assert (err.value.row, err.value.field) == (2, "created_at")


# ------------------------------------------------------------------------------------------ Weibo
WEIBO_HEADER = ",pub_time,weibo_content,forward,comment,like,weibo_url,weibo_topic\n"


def test_weibo_fixture_dedupes_by_url_in_natural_file_order(tmp_path):
    write(tmp_path / "sina_list_2.csv", WEIBO_HEADER
          + "0,5月12日 09:15,#习近平在山西考察#【习近平来到云冈石窟】5月11日傍晚 \u200b\u200b...展开全文,1202.0,927.0,9162.0,"
            "https://weibo.com/2656274875/J1xUYd0UM?from=page&mod=weibotime,习近平来到云冈石窟\n"
          + '1,"3月24日 21:59     \t    已编辑",【#某某#】正文 #B#,10.0,5.0,100.0,https://weibo.com/2656274875/IA8qRfipn?from=a,#某某#\n')
    write(tmp_path / "sina_list_10.csv", WEIBO_HEADER
          + "0,3月24日 21:59,【#某某#】正文 #B#,12.0,5.0,99.0,https://weibo.com/2656274875/IA8qRfipn?from=b,#某某#\n")
    table = read_weibo(tmp_path)
    rows = by_id(table)
    assert sorted(rows) == ["IA8qRfipn", "J1xUYd0UM"]
    post = rows["IA8qRfipn"]
    assert (post["shares"], post["comments"], post["likes"]) == (12, 5, 100)  # the largest of the duplicates
    assert post["published_at"] == utc(2020, 3, 24, 13, 59)  # China time
    assert post["title"] == "某某" and post["content"] == "正文" and post["hashtags"] == ["某某", "B"]
    extra = json.loads(post["extra"])
    assert extra["edited"] is True and extra["file"] == "sina_list_2.csv"  # list_2 is read before list_10
    first = rows["J1xUYd0UM"]
    assert first["content"] == "【习近平来到云冈石窟】5月11日傍晚" and first["author_id"] == "2656274875"
    assert first["hashtags"] == ["习近平在山西考察"] and json.loads(first["extra"])["truncated"] is True
    assert first["published_at"] == utc(2020, 5, 12, 1, 15)
    assert read_report(table)["merged"] == {"rows with a url seen before (files overlap)": 1}


def test_weibo_count_that_is_not_a_number(tmp_path):
    path = write(tmp_path / "w.csv", WEIBO_HEADER + "0,5月12日 09:15,正文,abc,1.0,1.0,https://weibo.com/1/A,\n")
    with pytest.raises(DataError) as err:
        read_weibo(path)
    assert (err.value.row, err.value.field) == (1, "forward")


# ------------------------------------------------------------------------------------------ generic
GENERIC = ("id,headline,body,tags,cats,user,ts,likes,favs,src\n"
           'a1,标题一,正文 #旅行[话题]#,,"[""生活"", ""旅行""]",u1,1717646493000,1.5万,3,web\n'
           "a2,标题二,正文二,美食|探店,生活|美食,u2,2024-06-06T12:01:33+08:00,12,,app\n")
GENERIC_MAP = {"note_id": "id", "title": "headline", "content": "body", "hashtags": "tags", "category": "cats",
               "author_id": "user", "published_at": "ts", "likes": "likes", "collects": "favs"}


def test_generic_csv_with_column_map(tmp_path):
    table = read_generic(write(tmp_path / "n.csv", GENERIC), GENERIC_MAP)
    rows = by_id(table)
    assert rows["a1"]["content"] == "正文" and rows["a1"]["hashtags"] == ["旅行"]  # empty tags cell: inline tags
    assert rows["a1"]["category"] == ["生活", "旅行"] and rows["a1"]["likes"] == 15000 and rows["a1"]["collects"] == 3
    assert rows["a2"]["hashtags"] == ["美食", "探店"] and rows["a2"]["category"] == ["生活", "美食"]
    assert rows["a2"]["collects"] is None
    assert rows["a1"]["published_at"] == rows["a2"]["published_at"] == utc(2024, 6, 6, 4, 1, 33)
    assert json.loads(rows["a1"]["extra"]) == {"src": "web"}
    assert read_generic(tmp_path / "n.csv", GENERIC_MAP, keep_extra=False).column("extra").to_pylist() == ["{}", "{}"]


def test_generic_jsonl_and_parquet(tmp_path):
    record = {"note_id": "j1", "title": "T", "content": "C #a#", "hashtags": ["x", "#y"], "likes": 5,
              "published_at": 1717646493, "meta": {"k": 1}}
    note = read_source("jsonl", write(tmp_path / "n.jsonl", json.dumps(record) + "\n\n")).notes.to_pylist()[0]
    assert note["hashtags"] == ["x", "y"] and note["content"] == "C" and note["likes"] == 5
    assert note["published_at"] == utc(2024, 6, 6, 4, 1, 33) and json.loads(note["extra"]) == {"meta": {"k": 1}}
    pq.write_table(pa.table({"note_id": [1, 2], "title": ["a", "b"], "category": [["c1", "c2"], None],
                             "likes": [1, None]}), tmp_path / "n.parquet")
    rows = by_id(read_source("parquet", tmp_path / "n.parquet").notes)
    assert rows["1"]["category"] == ["c1", "c2"] and rows["2"]["category"] == [] and rows["2"]["likes"] is None


def test_read_source_dispatch(notellm_files, movielens_dir):
    assert set(FORMATS) == {"notellm-csv", "qilin", "mediacrawler", "movielens", "kuairec", "hackernews", "weibo",
                            "csv", "tsv", "jsonl", "json", "parquet", "mind"}
    result = read_source("notellm-csv", notellm_files[0], pairs_csv=notellm_files[1])
    assert result.notes.num_rows == 3 and result.pairs.num_rows == 2 and result.events is None
    result = read_source("movielens", movielens_dir, min_rating=4.5)
    assert result.events.num_rows == 3 and result.pairs is None
    with pytest.raises(DataError, match="takes no option"):
        read_source("movielens", movielens_dir, min_ratin=4.5)


# ------------------------------------------------------------------------------------------ bad input
def test_malformed_row_wrong_column_count(tmp_path):
    path = write(tmp_path / "bad.csv", "note_id,title\na,b\nc,d,e\nf,g\n")
    with pytest.raises(DataError) as err:
        read_generic(path)
    assert err.value.row == 2 and "expected 2, found 3 (line 3)" in str(err.value) and "bad.csv" in str(err.value)
    table = read_generic(path, on_bad_rows="skip")
    assert table.column("note_id").to_pylist() == ["a", "f"]
    assert read_report(table)["skipped"] == {"wrong number of columns": 1}
    # the line named is where the bad row starts, after a quoted field spanning two lines
    with pytest.raises(DataError, match=r"expected 2, found 3 \(line 4\)"):
        read_generic(write(tmp_path / "multi.csv", 'note_id,title\na,"x\ny"\nc,d,e\n'))
    with pytest.raises(DataError) as err:
        read_notellm_csv(write(tmp_path / "nl.csv", "n1,t,c,i,A@\nn2,t,c\n"))
    assert err.value.row == 2 and "expected 5, found 3" in str(err.value)


def test_missing_note_id(tmp_path):
    path = write(tmp_path / "n.csv", "id,title\na,x\n  ,y\n")
    with pytest.raises(DataError) as err:
        read_generic(path, {"note_id": "id"})
    assert (err.value.row, err.value.field) == (2, "id") and "note id is missing" in str(err.value)
    with pytest.raises(DataError, match="no note id column"):
        read_generic(path)  # nothing maps to note_id


def test_unknown_format_and_unmapped_columns(tmp_path):
    with pytest.raises(DataError, match="unknown format 'xml'"):
        read_source("xml", tmp_path)
    path = write(tmp_path / "n.csv", "id,title\na,x\n")
    with pytest.raises(DataError, match="not in the file"):
        read_generic(path, {"note_id": "id", "title": "headline"})
    with pytest.raises(DataError, match="not Note fields"):
        read_generic(path, {"note_id": "id", "score": "title"})


def test_non_utf8_file_names_file_and_byte_offset(tmp_path):
    path = write(tmp_path / "gbk.csv", "id,title\n1,中文\n", encoding="gbk")
    with pytest.raises(DataError) as err:
        read_generic(path, encoding="utf-8")
    message = str(err.value)
    assert str(path) in message and "byte offset 11 (line 2)" in message and "UTF-8" in message
    with pytest.raises(DataError, match="byte offset"):
        read_mediacrawler(path)
    assert read_generic(path, {"note_id": "id"}, encoding="gbk").column("title").to_pylist() == ["中文"]
    detected = read_generic(path, {"note_id": "id"})  # encoding=auto: GB18030 (a superset of GBK)
    assert detected.column("title").to_pylist() == ["中文"]
    assert "text encoding detected: gb18030" in read_report(detected)["notes"]


def test_duplicate_note_ids(tmp_path):
    path = write(tmp_path / "n.csv", "id,title\na,x\nb,y\na,z\n")
    with pytest.raises(DataError) as err:
        read_generic(path, {"note_id": "id"})
    assert err.value.row == 3 and "first seen in row 1" in str(err.value)
    table = read_generic(path, {"note_id": "id"}, on_bad_rows="skip")
    assert by_id(table)["a"]["title"] == "x" and table.num_rows == 2
    assert read_report(table)["skipped"] == {"duplicate note id (first row kept)": 1}


def test_count_that_is_not_a_number_generic(tmp_path):
    path = write(tmp_path / "n.csv", "id,likes\na,3\nb,lots\n")
    with pytest.raises(DataError) as err:
        read_generic(path, {"note_id": "id"})
    assert (err.value.row, err.value.field) == (2, "likes") and "'lots' is not a count" in str(err.value)


def test_bad_policy_name(tmp_path):
    with pytest.raises(DataError, match="on_bad_rows"):
        read_generic(write(tmp_path / "n.csv", "note_id\na\n"), on_bad_rows="ignore")


def test_summarize_counts_hashtags_and_dates(tmp_path):
    table = read_generic(write(tmp_path / "n.csv", GENERIC), GENERIC_MAP)
    summary = summarize(table)
    assert summary["rows"] == 2 and summary["hashtags_per_note"] == 1.5 and summary["share_with_hashtags"] == 1.0
    assert "published: 2024-06-06 04:01 .. 2024-06-06 04:01 UTC" in summary["lines"]


# ------------------------------------------------------------------------------------------ CLI
def invoke(*args: str):
    from notellm.cli import app

    return CliRunner().invoke(app, ["data", *args])


def test_cli_import_generic_with_map(tmp_path):
    src = write(tmp_path / "n.csv", GENERIC)
    out = tmp_path / "out" / "notes.parquet"
    maps = [arg for field, column in GENERIC_MAP.items() for arg in ("--map", f"{field}={column}")]
    result = invoke("import", "csv", str(src), "--out", str(out), *maps)
    assert result.exit_code == 0, result.output
    assert "notes: 2 rows" in result.output and "hashtags per note 1.50" in result.output
    notes = read_notes(out)
    assert notes.column("likes").to_pylist() == [15000, 12]


def test_cli_import_movielens_events_and_notellm_pairs(tmp_path, movielens_dir, notellm_files):
    result = invoke("import", "movielens", str(movielens_dir), "--out", str(tmp_path / "n.parquet"),
                    "--events-out", str(tmp_path / "e.parquet"), "--opt", "min_rating=4.5")
    assert result.exit_code == 0, result.output
    events = pq.read_table(tmp_path / "e.parquet")
    assert events.column("seq").to_pylist() == [6, 3, 4]
    assert "skipped 1: event names a note that is not in the note table" in result.output
    result = invoke("import", "notellm-csv", str(notellm_files[0]), "--out", str(tmp_path / "nl.parquet"),
                    "--opt", f"pairs_csv={notellm_files[1]}", "--pairs-out", str(tmp_path / "p.parquet"))
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 2


def test_cli_import_errors(tmp_path, notellm_files):
    src = write(tmp_path / "n.csv", "note_id\na\n")
    result = invoke("import", "csv", str(src), "--out", str(tmp_path / "o.parquet"), "--events-out", "e.parquet")
    assert isinstance(result.exception, DataError) and "has no events" in str(result.exception)
    result = invoke("import", "nope", str(src), "--out", str(tmp_path / "o.parquet"))
    assert isinstance(result.exception, DataError) and "unknown format" in str(result.exception)
    result = invoke("import", "kuairec", str(src), "--out", str(tmp_path / "o.parquet"), "--map", "title=x")
    assert isinstance(result.exception, DataError) and "--map" in str(result.exception)
    assert not (tmp_path / "o.parquet").exists()


def test_cli_formats_lists_every_format():
    result = invoke("formats")
    assert result.exit_code == 0
    for name in FORMATS:
        assert name in result.output


# ------------------------------------------------------------------------------------------ real data
def test_real_movielens():
    notes, events = read_movielens(shared_dataset("movielens_latest_small"))
    assert notes.num_rows == 9742 and events.num_rows == 61716  # ratings >= 3.5 of 100,836
    rows = by_id(notes)
    assert rows["1"]["content"] == ("Title: Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, "
                                    "Fantasy. Tags: #pixar #fun")
    # Star Wars IV: classic_sci-fi and sci-fi 3x each, four tags 2x, then alphabetical among 12 tags used once
    assert rows["260"]["hashtags"] == ["classic_sci-fi", "sci-fi", "classic", "epic", "space_action", "star_wars",
                                       "action", "darth_vader", "engrossing_adventure", "great_soundtrack"]
    assert rows["114335"]["category"] == ["unknown"]
    first = events.slice(0, 5).to_pylist()
    # user 1's first clicks: 804 and 1210 share a timestamp, file order (seq) breaks the tie
    assert [(e["user_id"], e["note_id"], e["seq"]) for e in first] == [
        ("1", "804", 43), ("1", "1210", 73), ("1", "2018", 120), ("1", "2628", 171), ("1", "2826", 183)]
    assert len(set(events.column("user_id").to_pylist())) == 609


def test_real_qilin_toy():
    folder = shared_dataset("qilin_toy")
    notes, events = read_qilin(folder)
    assert notes.num_rows == 10 and events.num_rows == 0  # the toy sessions show notes outside the toy table
    assert read_report(events)["skipped"] == {"event names a note that is not in the note table": 144}
    note = by_id(notes)["0"]
    assert note["title"] == "这题我会！每年都要灌几十斤的肉！" and note["hashtags"] == ["腊肠"]
    assert (note["likes"], note["collects"], note["comments"], note["shares"], note["impressions"]) == (
        13022, 7829, 414, 56, 10672)
    assert note["category"] == ["5ab094be481d26b8ef9045f1", "c00000000000000000000487", "c00000000000000000000488"]
    _, kept = read_qilin(folder, unknown_notes="keep")
    per_table = {}
    for source in kept.column("source").to_pylist():
        per_table[source] = per_table.get(source, 0) + 1
    # counted with grep "'click': 1[,.]" in each file
    assert per_table == {"recommendation_train": 18, "recommendation_test": 31, "search_train": 27,
                         "search_test": 43, "dqa": 25}
    assert kept.to_pylist()[0]["note_id"] == "1206673" and kept.to_pylist()[0]["session_id"] == "63865"


def test_real_mediacrawler():
    table = read_mediacrawler(shared_dataset("xhs_mediacrawler_hanseylee") / "xhs_note.csv")
    assert table.num_rows == 2187
    rows = by_id(table)
    note = rows["67000222000000002a032e02"]
    assert (note["likes"], note["collects"], note["comments"], note["shares"]) == (15000, 8100, 517, 603)  # 1.5万
    assert note["published_at"] == utc(2024, 10, 4, 14, 56, 34)
    tags_only = rows["672c264e000000001b029d50"]  # desc is nothing but ten U+FEFF-wrapped tags
    assert tags_only["content"] == "" and tags_only["hashtags"][:3] == ["戒手机", "戒手机瘾", "焦虑"]
    assert len(tags_only["hashtags"]) == 10
    assert json.loads(tags_only["extra"])["ip_location"] == "天津"
    assert not any("\ufeff" in c for c in table.column("content").to_pylist())
    assert max(table.column("likes").to_pylist()) == 145000


def test_real_kuairec():
    table = read_kuairec(shared_dataset("kuairec_captions"))
    assert table.num_rows == 10728  # 10,732 physical rows minus 4 captions cut by a raw line break
    rows = by_id(table)
    assert rows["1378"]["content"] == "张凯教练：“我希望我们能开启一段王朝\n！”"
    assert rows["4"]["hashtags"] == ["搞笑", "感谢快手我要上热门", "五爱市场"]
    assert rows["4"]["category"] == ["时尚", "营销售卖", "女装"] and rows["4"]["content"] == "这真是完美搭配啊！"
    assert rows["0"]["category"] == ["颜值", "颜值随拍"]
    assert sum(1 for c in table.column("category").to_pylist() if not c) == 40


def test_real_hackernews():
    table = read_hackernews(shared_dataset("hackernews_2016_sample") / "hacker_news.csv")
    assert table.num_rows == 14635
    note = by_id(table)["12579008"]
    assert note["published_at"] == utc(2016, 9, 26, 7, 26)  # 9/26/2016 3:26 US Eastern (summer time)
    assert (note["likes"], note["comments"], note["author_id"]) == (1, 0, "altstar")
    assert note["content"] == "http://www.regulations.gov/document?D=FDA-2015-D-3719-0018"


def test_real_weibo():
    table = read_weibo(shared_dataset("weibo_cctv_2020"))
    assert table.num_rows == 7951
    assert read_report(table)["merged"] == {"rows with a url seen before (files overlap)": 681}
    post = by_id(table)["IA8qRfipn"]  # in list_4 (like 243719) and list_5 (like 243725)
    assert (post["shares"], post["comments"], post["likes"]) == (1134405, 16575, 243725)
    assert post["published_at"] == utc(2020, 3, 24, 13, 59)
