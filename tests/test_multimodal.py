"""NoteLLM-2 model: prompts, shapes and masks, <IMG> replacement, late-fusion math, bad images, save/load."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from notellm.data.schema import empty_note, notes_to_table, write_notes
from notellm.data.synthetic_mm import COLOURS, draw_image
from notellm.errors import DataError
from notellm.models.multimodal import (ImageTokens, LateFusion, MultimodalSettings, NoteLLM2,
                                       add_multimodal_tokens, build_multimodal_prompt)
from notellm.models.notellm import NoteLLMConfig
from notellm.models.prompts import PromptConfig, build_prompt

TOKENS_PER_IMAGE = 16  # tiny-clip: 32 x 32 pixels, 8 x 8 patches, CLS dropped


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    """A private copy of the session's tiny-qwen3 with the three special tokens added once. The models below
    share it (they only run forward passes), each with its own tower, connector and fusion."""
    lm, tokenizer = copy.deepcopy(tiny_backbone[0]), copy.deepcopy(tiny_backbone[1])
    add_multimodal_tokens(lm, tokenizer)
    return lm.eval(), tokenizer


def make_model(backbone, seed=0, **settings) -> NoteLLM2:
    lm, tokenizer = backbone
    torch.manual_seed(seed)
    config = NoteLLMConfig(backbone="tiny-qwen3", dim=16, max_length=128)
    return NoteLLM2(lm, tokenizer, config, MultimodalSettings(**settings)).eval()


@pytest.fixture(scope="module")
def model(backbone):
    return make_model(backbone, max_images=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = {}
    for name, colour, shape in (("red", COLOURS["红"], "circle"), ("blue", COLOURS["蓝"], "square"),
                                ("green", COLOURS["绿"], "triangle")):
        paths[name] = str(folder / f"{name}.png")
        draw_image(colour, shape, 40, rng).save(paths[name])
    (folder / "corrupt.png").write_bytes(b"this is not an image")
    raw = (folder / "red.png").read_bytes()
    (folder / "truncated.png").write_bytes(raw[: len(raw) // 2])
    paths.update(corrupt=str(folder / "corrupt.png"), truncated=str(folder / "truncated.png"),
                 missing=str(folder / "missing.png"))
    return paths


def note(note_id, images=(), title="火锅分享", content="今天吃到一家超好吃的火锅"):
    row = empty_note(note_id)
    row.update(title=title, content=content, hashtags=["美食"], image_paths=list(images))
    return row


# ---- prompts ---------------------------------------------------------------------------------------------
def test_micl_and_early_fusion_prompts_are_exact():
    n = note("a", ["x.png", "y.png", "z.png"], title="标题", content="内容")
    text = '笔记：{"标题":"标题","话题":"美食","内容":"内容"}，压缩为一个词：“[EMB]”。'
    micl = build_multimodal_prompt(n, settings=MultimodalSettings())
    assert micl.prefix == '笔记：{"图片":"<IMG>"}，压缩为一个词：“[IMG_EMB]”。' + text
    assert micl.extras["images"] == ["x.png"]  # max_images 1: the cover
    two = build_multimodal_prompt(n, settings=MultimodalSettings(max_images=2, micl=False))
    assert two.prefix == '笔记：{"图片":"<IMG><IMG>","标题":"标题","话题":"美食","内容":"内容"}，压缩为一个词：“[EMB]”。'
    assert build_multimodal_prompt(note("b", []), settings=MultimodalSettings()).prefix == \
        build_prompt(note("b", [])).prefix  # no image: the text prompt, no [IMG_EMB]
    assert build_multimodal_prompt(n, settings=MultimodalSettings(images=False)).prefix == text
    en = build_multimodal_prompt(n, cfg=PromptConfig(language="en"), settings=MultimodalSettings())
    assert en.prefix.startswith('Compress the image of the note into one word for recommendation. '
                                '{"image": "<IMG>"} The compression word is:"[IMG_EMB]". Extract the note')
    assert en.prefix.endswith('The compression word is:"[EMB]".')


def test_special_tokens_in_note_text_are_removed():
    n = note("a", ["x.png"], title="<IMG>标题[EMB]", content="内容[IMG_EMB]")
    prefix = build_multimodal_prompt(n, settings=MultimodalSettings()).prefix
    assert prefix.count("<IMG>") == 1 and prefix.count("[EMB]") == 1 and prefix.count("[IMG_EMB]") == 1


# ---- shapes, masks, placeholders -------------------------------------------------------------------------
def test_shapes_masks_and_placeholder_counts(model, images):
    notes = [note("two", [images["red"], images["blue"]]), note("none"), note("one", [images["green"]])]
    batch = model.encode_prompts(model.prompts_for(notes), with_answers=False)
    tokens, mask = batch["input_ids"], batch["attention_mask"]
    assert isinstance(tokens, ImageTokens) and model.tokens_per_image == TOKENS_PER_IMAGE
    assert (tokens.ids == model.img_token_id).sum(1).tolist() == [32, 0, 16]
    assert tokens.pixel_values.shape == (3, 3, 32, 32) and tokens.image_rows.tolist() == [0, 0, 2]
    # the note without images is exactly the text prompt, right-padded
    text_ids = model.tokenizer(build_prompt(notes[1]).prefix)["input_ids"]
    assert tokens.ids[1, : len(text_ids)].tolist() == text_ids and mask[1].sum().item() == len(text_ids)
    unexpanded = model.tokenizer(model.prompts_for(notes)[0].prefix)["input_ids"]  # each <IMG> one token here
    assert mask[0].sum().item() == len(unexpanded) + 2 * (TOKENS_PER_IMAGE - 1)
    assert (tokens.ids[1, len(text_ids):] == model.tokenizer.pad_token_id).all()
    assert tokens.ids[0, batch["emb_pos"][0]] == model.emb_token_id
    with torch.no_grad():
        out = model(tokens, mask, batch["emb_pos"])
    assert out["embeddings"].shape == (3, 16) and out["image_embeddings"].shape == (3, 16)
    assert out["has_image"].tolist() == [True, False, True]
    assert out["has_image_embedding"].tolist() == [True, False, True]
    torch.testing.assert_close(out["embeddings"].norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("settings,per_image", [
    (dict(), 16),
    (dict(patch_pool=2), 4),
    (dict(connector="qformer", qformer_queries=5, vision_tower="tiny-siglip"), 5),
])
def test_img_placeholder_is_replaced_by_exactly_the_connector_tokens(backbone, images, settings, per_image):
    model = make_model(backbone, max_images=2, **settings)
    notes = [note("a", [images["red"], images["blue"]]), note("b", [images["green"]])]
    batch = model.encode_prompts(model.prompts_for(notes), with_answers=False)
    tokens = batch["input_ids"]
    with torch.no_grad():
        embeds, _, has_image = model.input_embeddings(tokens)
        expected = model.connector(model.vision_features(tokens.pixel_values)[0])  # [3 images, T, d]
        table = model.lm.get_input_embeddings()(tokens.ids)
    placeholders = tokens.ids == model.img_token_id
    assert expected.shape == (3, per_image, model.hidden_size)
    assert placeholders.sum(1).tolist() == [2 * per_image, per_image]
    torch.testing.assert_close(embeds[0][placeholders[0]], expected[:2].reshape(-1, model.hidden_size))
    torch.testing.assert_close(embeds[1][placeholders[1]], expected[2])
    torch.testing.assert_close(embeds[~placeholders], table[~placeholders])  # every other row untouched
    assert has_image.tolist() == [True, True]


def test_image_vector_sees_only_the_image_and_the_note_vector_sees_both(model, images):
    notes = [note("a", [images["red"]], title="火锅"), note("b", [images["red"]], title="旅行雪山"),
             note("c", [images["blue"]], title="火锅")]
    batch = model.encode_prompts(model.prompts_for(notes), with_answers=False)
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], batch["emb_pos"])
    img, emb = out["image_embeddings"], out["embeddings"]
    torch.testing.assert_close(img[0], img[1])   # same image, other text: the [IMG_EMB] vector is causal
    assert (img[0] - img[2]).abs().max() > 1e-3   # another image changes it
    assert (emb[0] - emb[1]).abs().max() > 1e-3 and (emb[0] - emb[2]).abs().max() > 1e-3


# ---- late fusion -----------------------------------------------------------------------------------------
def test_late_fusion_gate_matches_hand_computation():
    fusion = LateFusion(2)
    with torch.no_grad():
        fusion.gate.weight.copy_(torch.tensor([[0.5, -1.0, 0.0, 2.0], [1.0, 0.0, -0.5, 0.0]]))
        fusion.gate.bias.copy_(torch.tensor([0.1, -0.2]))
    e = fusion(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]]))
    # z0 = sigmoid(0.5*1 - 1*2 + 0*3 + 2*(-1) + 0.1) = sigmoid(-3.4) = 0.0322955; e0 = z0*1 + (1-z0)*3
    # z1 = sigmoid(1*1 + 0*2 - 0.5*3 + 0*(-1) - 0.2) = sigmoid(-0.7) = 0.3318122; e1 = z1*2 + (1-z1)*(-1)
    assert e[0, 0].item() == pytest.approx(2.935409, abs=1e-5)
    assert e[0, 1].item() == pytest.approx(-0.004563, abs=1e-5)
    assert 1 / (1 + math.exp(3.4)) == pytest.approx(0.0322955, abs=1e-7)


def test_late_fusion_in_the_model_uses_the_mean_pooled_tower_output(backbone, images):
    model = make_model(backbone, max_images=2, micl=False, late_fusion=True)
    notes = [note("a", [images["red"], images["blue"]]), note("b")]
    batch = model.encode_prompts(model.prompts_for(notes), with_answers=False)
    tokens = batch["input_ids"]
    with torch.no_grad():
        out = model(tokens, batch["attention_mask"], batch["emb_pos"])
        hidden = model.hidden_states(tokens, batch["attention_mask"])
        h_llm = hidden[torch.arange(2), batch["emb_pos"] - 1]
        pooled = model.tower(pixel_values=tokens.pixel_values).pooler_output   # [2 images, Dv]
        h_vis = model.vision_map(pooled).mean(0)
        z = torch.sigmoid(model.fusion.gate(torch.cat([h_llm[0], h_vis])))
        fused = z * h_llm[0] + (1 - z) * h_vis
        expected = torch.nn.functional.normalize(model.proj(torch.stack([fused, h_llm[1]])), dim=-1)
    torch.testing.assert_close(out["embeddings"], expected, rtol=1e-4, atol=1e-5)
    assert "image_embeddings" not in out  # no mICL


# ---- unreadable images -----------------------------------------------------------------------------------
def test_unreadable_images_are_dropped_counted_and_never_zeros(backbone, images):
    model = make_model(backbone, max_images=2)
    notes = [note("bad-first", [images["corrupt"], images["red"]]), note("only-missing", [images["missing"]]),
             note("truncated", [images["truncated"]]), note("text", [])]
    batch = model.encode_prompts(model.prompts_for(notes), with_answers=False)
    tokens = batch["input_ids"]
    assert (tokens.ids == model.img_token_id).sum(1).tolist() == [16, 0, 0, 0]  # the red image survives
    summary = model.reader.summary()
    assert summary["images_skipped"] == 3 and summary["notes_affected"] == 3
    assert {(p["note_id"], p["path"]) for p in summary["problems"]} == {
        ("bad-first", images["corrupt"]), ("only-missing", images["missing"]), ("truncated", images["truncated"])}
    # a note left without images is embedded exactly as the same note written without images
    with torch.no_grad():
        out = model(tokens, batch["attention_mask"], batch["emb_pos"])
        alone = model.embed_notes([dict(notes[1], image_paths=[])])
    torch.testing.assert_close(out["embeddings"][1], alone[0], rtol=1e-4, atol=1e-5)
    assert not out["has_image"][1]


def test_unreadable_image_fails_clearly_when_asked(backbone, images):
    model = make_model(backbone, on_bad_image="error")
    with pytest.raises(DataError, match=r"corrupt\.png.*image_paths.*note 'n1'"):
        model.encode_prompts(model.prompts_for([note("n1", [images["corrupt"]])]), with_answers=False)


# ---- save / load / embed ---------------------------------------------------------------------------------
def test_saved_model_reloads_through_the_embedding_loader(model, images, tmp_path):
    from notellm.inference.embed import embed_table, read_embeddings

    notes = [note("a", [images["red"], images["blue"]]), note("b"), note("c", [images["green"]])]
    before = model.embed_notes(notes)
    model.save(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "notellm.json").read_text())
    assert card["multimodal"]["mode"] == "micl+late" and card["multimodal"]["tokens_per_image"] == 16
    # `notellm embed`'s path (load_model_for_embedding dispatches on the card): a text NoteLLM would ignore
    # the images and give other vectors
    write_notes(notes_to_table([dict(n) for n in notes]), tmp_path / "notes.parquet")
    ids, vectors, meta = read_embeddings(embed_table(str(tmp_path / "notes.parquet"), str(tmp_path / "m"),
                                                     str(tmp_path / "e"), bf16=False))
    assert ids == ["a", "b", "c"] and meta["dim"] == 16
    np.testing.assert_allclose(vectors, before.numpy(), atol=1e-5)


def test_a_full_clip_checkpoint_folder_gives_its_vision_tower_and_processor(tmp_path, images):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionModel

    from notellm.models.multimodal import build_vision_tower, make_preprocess

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)
    torch.manual_seed(0)
    full = CLIPModel(CLIPConfig(vision_config=vision, text_config=dict(hidden_size=32, intermediate_size=64,
                                                                       num_hidden_layers=1, num_attention_heads=2)))
    full.save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "clip")
    tower, processor, family = build_vision_tower(str(tmp_path / "clip"))
    assert isinstance(tower, CLIPVisionModel) and family == "clip" and processor is not None
    for name in ("embeddings.patch_embedding.weight", "encoder.layers.0.mlp.fc1.weight", "post_layernorm.weight"):
        torch.testing.assert_close(tower.get_parameter(name), full.vision_model.get_parameter(name))
    from PIL import Image

    pixels = make_preprocess(tower, processor, family)([Image.open(images["red"])] * 2)
    assert pixels.shape == (2, 3, 32, 32) and torch.equal(pixels[0], pixels[1])  # deterministic, no augmentation


def test_a_dinov2_folder_is_a_tower_with_imagenet_preprocessing_and_cls_pooling(backbone, images, tmp_path):
    """The offline tower's family (dinov2-s-offline is a Dinov2Model folder) on a tiny random Dinov2: one
    token per patch (CLS dropped) for the connector, the post-LayerNorm CLS for late fusion, ImageNet
    normalisation; a saved NoteLLM-2 with it reloads to the same vectors."""
    from PIL import Image
    from transformers import Dinov2Config, Dinov2Model

    from notellm.inference.embed import load_model_for_embedding
    from notellm.models.multimodal import build_vision_tower
    from notellm.models.vision_offline import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             image_size=28, patch_size=14)).save_pretrained(tmp_path / "dino")
    tower, processor, family = build_vision_tower(str(tmp_path / "dino"))
    assert family == "dinov2" and processor is None
    model = NoteLLM2(copy.deepcopy(backbone[0]), backbone[1], NoteLLMConfig("tiny-qwen3", dim=16, max_length=128),
                     MultimodalSettings(), tower=tower, processor=processor, family=family).eval()
    assert model.tokens_per_image == 4  # 2 x 2 patches, CLS dropped
    pixels = model.preprocess([Image.open(images["red"])])
    raw = np.asarray(Image.open(images["red"]).convert("RGB").resize((28, 28), Image.Resampling.BICUBIC)) / 255.0
    expected = (raw - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(pixels[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    feats, pooled = model.vision_features(pixels)
    with torch.no_grad():
        out = tower(pixel_values=pixels)
    torch.testing.assert_close(feats, out.last_hidden_state[:, 1:])
    torch.testing.assert_close(pooled, out.last_hidden_state[:, 0])
    notes = [note("a", [images["red"]]), note("b", [images["blue"]])]
    before = model.embed_notes(notes)
    model.save(tmp_path / "m")
    reloaded = load_model_for_embedding(str(tmp_path / "m"), bf16=False)
    assert reloaded.family == "dinov2"
    np.testing.assert_allclose(reloaded.embed_notes(notes).numpy(), before.numpy(), atol=1e-5)
