"""Text conventions: invisible characters, the three inline hashtag styles, platform counts."""

from __future__ import annotations

import pytest

from notellm.data.text import (clean_text, normalize_tag, parse_count, parse_hashtags, parse_open_hashtags,
                               parse_weibo_hashtags, split_hashtags, strip_hashtags, strip_open_hashtags,
                               strip_weibo_hashtags)


def test_clean_text_strips_zero_width_and_keeps_platform_emoji():
    assert clean_text("\ufeff 好看[哭惹R]\u200b\u200c\u200d ") == "好看[哭惹R]"
    assert clean_text(None) == ""
    assert clean_text(float("nan")) == ""
    assert clean_text(12) == "12"


def test_parse_hashtags_adjacent_topic_tags():
    assert parse_hashtags("#a[话题]##b[话题]#") == ["a", "b"]
    # MediaCrawler puts U+FEFF around each tag
    assert parse_hashtags("正文\ufeff#戒手机[话题]#\ufeff \ufeff#焦虑[话题]#\ufeff") == ["戒手机", "焦虑"]


def test_parse_hashtags_dedupes_and_keeps_order():
    assert parse_hashtags("#旅行[话题]# 海边 #美食[话题]# #旅行[话题]#") == ["旅行", "美食"]


def test_parse_hashtags_does_not_take_the_text_between_two_tags_for_a_tag():
    # non-overlapping matches (as re.findall in the reference code): `正文` sits between two tags
    assert parse_hashtags("#A#正文#B#") == ["A", "B"]


def test_parse_hashtags_limits():
    long_tag = "长" * 17
    assert parse_hashtags(f"#{long_tag}# #ok#") == ["ok"]
    assert parse_hashtags("#" + "长" * 16 + "#") == ["长" * 16]
    many = "".join(f"#t{i}[话题]#" for i in range(12))
    assert parse_hashtags(many) == [f"t{i}" for i in range(10)]
    assert parse_hashtags(many, max_tags=3) == ["t0", "t1", "t2"]
    assert parse_hashtags(None) == []


def test_strip_hashtags_keeps_paragraphs_and_words_of_long_tags():
    text = "第一段 #旅行[话题]#\n\n\n第二段\t\t很长  #" + "长" * 17 + "# 完"
    assert strip_hashtags(text) == "第一段\n\n第二段 很长 " + "长" * 17 + " 完"
    assert strip_hashtags("\ufeff#a[话题]#\ufeff \ufeff#b[话题]#\ufeff") == ""


def test_split_hashtags_is_strip_and_parse_in_one_pass():
    text = "正文\ufeff#减脂[话题]#\ufeff #" + "长" * 17 + "# #健身[话题]#"
    assert split_hashtags(text) == (strip_hashtags(text), parse_hashtags(text)) == ("正文 " + "长" * 17, ["减脂", "健身"])
    assert split_hashtags(None) == ("", [])


def test_weibo_topics_hold_free_text():
    text = "#主播说联播#【#2019年人均阅读4.65本#】正文#B#"
    assert parse_weibo_hashtags(text) == ["主播说联播", "2019年人均阅读4.65本", "B"]
    assert strip_weibo_hashtags(text) == "【 】正文"
    assert parse_weibo_hashtags("#" + "长" * 33 + "#") == []
    assert strip_weibo_hashtags("看#" + "长" * 33 + "#了") == "看" + "长" * 33 + "了"


def test_open_hashtags_kuaishou_style():
    caption = "#搞笑 #感谢快手我要上热门 #五爱市场 这真是完美搭配啊！#热门"
    assert parse_open_hashtags(caption) == ["搞笑", "感谢快手我要上热门", "五爱市场", "热门"]
    assert strip_open_hashtags(caption) == "这真是完美搭配啊！"
    assert parse_open_hashtags("上海的天气。#风景#旅行#摄影") == ["风景", "旅行", "摄影"]
    assert strip_open_hashtags("上海的天气。#风景#旅行#摄影") == "上海的天气。"


def test_normalize_tag():
    assert normalize_tag(" #Vlog 日常[话题]# ") == "vlog日常"


@pytest.mark.parametrize(
    "raw, expected",
    [("1234", 1234), ("1.5万", 15000), ("10w+", 100000), ("10万+", 100000), ("2千", 2000), ("1.2k", 1200),
     ("1,024", 1024), ("1202.0", 1202), ("1.5亿", 150_000_000), (" 7 ", 7), ("\ufeff3", 3), (7, 7),
     (3.0, 3), ("", None), (None, None), (float("nan"), None), ("nan", None)],
)
def test_parse_count(raw, expected):
    assert parse_count(raw) == expected


@pytest.mark.parametrize("junk", ["abc", "万", "-3", -3, "inf", "1.5万万", "12 likes", True, float("inf")])
def test_parse_count_rejects_junk(junk):
    with pytest.raises(ValueError):
        parse_count(junk)
