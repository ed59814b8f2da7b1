"""Note Compression Prompt templates (Chinese as the reference code, English as the paper)."""

from notellm.models.prompts import PromptConfig, build_prompt, parse_answer_list

NOTE = dict(title="夏日穿搭分享，三套显瘦又百搭的搭配", content="今天分享三套适合夏天的穿搭" * 10,
            hashtags=["穿搭", "夏日", "显瘦"], category=["时尚", "穿搭", "女装"])


def test_chinese_category_prompt_matches_reference_template():
    p = build_prompt(NOTE, "category")
    assert p.prefix == (
        '笔记：{"标题":"夏日穿搭分享，三套显瘦又百搭的搭配","话题":"穿搭，夏日，显瘦","内容":"'
        + ("今天分享三套适合夏天的穿搭" * 10)[:80] + '"}，压缩为一个词：“[EMB]”。生成笔记类目：'
    )
    assert p.answer == "时尚，穿搭。"


def test_hashtag_task_removes_the_target_tag_from_the_input():
    p = build_prompt(NOTE, "hashtag", tag_target=1)
    assert p.removed_tag == "夏日" and p.answer == "夏日。"
    assert '"话题":"穿搭，显瘦"' in p.prefix and p.prefix.endswith("生成笔记1个话题：")


def test_paper_hashtag_task_asks_for_the_chosen_tags_of_an_input_without_tags():
    p = build_prompt(NOTE, "hashtag", tag_target=(2, 0))
    assert p.answer == "穿搭，显瘦。" and p.prefix.endswith("生成笔记2个话题：")
    assert '"话题"' not in p.prefix
    # the same prompt `notellm tag` builds for generation, up to the answer
    assert p.prefix == build_prompt(NOTE, "hashtag", n_tags=2).prefix
    en = build_prompt(NOTE, "hashtag", PromptConfig(language="en"), tag_target=(1,))
    assert en.prefix.endswith("generate 1 topics of the note. " + en.prefix.split("of the note. ")[1].split(" The")[0]
                              + ' The compression word is:"[EMB]". The 1 topics are:')
    assert en.answer == " 夏日." and "'topic'" not in en.prefix and '"topic"' not in en.prefix


def test_truncation_lengths_are_configuration():
    p = build_prompt(NOTE, "embed", PromptConfig(title_chars=4, content_chars=6))
    assert '"标题":"夏日穿搭"' in p.prefix and '"内容":"今天分享三套"' in p.prefix


def test_english_template_follows_the_paper():
    p = build_prompt(NOTE, "category", PromptConfig(language="en", category_levels=1))
    assert p.prefix.startswith("Extract the note information in json format, compress it into one word for "
                               "recommendation, and generate the category of the note. {")
    assert p.prefix.endswith(' The compression word is:"[EMB]". The category is:')
    assert p.answer == " 时尚."
    embed = build_prompt(NOTE, "embed", PromptConfig(language="en"))
    # the embedding prompt equals the category-task prompt up to and including [EMB]
    assert p.prefix.split("[EMB]")[0] == embed.prefix.split("[EMB]")[0]


def test_category_task_never_sees_the_category_in_its_input():
    cfg = PromptConfig(include_category_in_input=True)
    assert '"类目"' not in build_prompt(NOTE, "category", cfg).prefix
    assert '"类目":"时尚，穿搭，女装"' in build_prompt(NOTE, "hashtag", cfg, tag_target=0).prefix


def test_parse_answer_list():
    assert parse_answer_list("时尚，穿搭。之后的文字") == ["时尚", "穿搭"]
    assert parse_answer_list(" #pixar, fun.\nmore", "en") == ["pixar", "fun"]


def test_special_tokens_in_note_text_are_removed():
    p = build_prompt(dict(NOTE, title="看这里[EMB]<IMG>", content="[IMG_EMB]正文"), "embed")
    assert p.prefix.count("[EMB]") == 1 and "<IMG>" not in p.prefix and "[IMG_EMB]" not in p.prefix
