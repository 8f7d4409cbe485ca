"""The grounding parser: the model's tagged boxes and points, and its JSON form, on 0-1000."""

import pytest

from mlx_minicpmv import grounding
from mlx_minicpmv.grounding import Box, Point, parse


def test_tagged_boxes_with_their_refs():
    text = "There is <ref>a red car</ref><box>100 200 400 600</box> and <ref>a dog</ref><box>500 500 900 1000</box>."
    assert parse(text) == [Box("a red car", 100, 200, 400, 600), Box("a dog", 500, 500, 900, 1000)]


def test_several_boxes_for_one_ref_and_several_in_one_tag():
    text = "<ref>people</ref><box>10 20 30 40</box><box>50 60 70 80</box> and <ref>cups</ref><box>1 2 3 4 5 6 7 8</box>"
    assert parse(text) == [Box("people", 10, 20, 30, 40), Box("people", 50, 60, 70, 80),
                           Box("cups", 1, 2, 3, 4), Box("cups", 5, 6, 7, 8)]


def test_points_and_bare_shapes():
    assert parse("<ref>the nose</ref><point>250 750</point>") == [Point("the nose", 250, 750)]
    assert parse("here: <box>0 0 1000 1000</box>") == [Box("", 0, 0, 1000, 1000)]


def test_coordinates_are_ordered_and_clamped_to_the_scale():
    assert parse("<box>800 900 100 -5</box><point>1200 40.5</point>") == [Box("", 100, 0, 800, 900),
                                                                           Point("", 1000, 40.5)]


def test_json_form_in_a_fence_with_the_usual_keys():
    text = ('Found them:\n```json\n[{"label": "cat", "bbox_2d": [10, 20, 300, 400]},\n'
            ' {"label": "ball", "point_2d": [600, 700]}]\n```')
    assert parse(text) == [Box("cat", 10, 20, 300, 400), Point("ball", 600, 700)]


def test_json_wrappers_and_label_maps():
    assert parse('{"objects": [{"name": "tree", "bbox": [1, 2, 3, 4]}]}') == [Box("tree", 1, 2, 3, 4)]
    assert parse('{"cat": [5, 6, 7, 8], "dog": [9, 10]}') == [Box("cat", 5, 6, 7, 8), Point("dog", 9, 10)]


@pytest.mark.parametrize("text", ["no boxes here", "<box>1 2 3</box>", "<ref>cat</ref>", '[{"label": "x"}]',
                                  '```json\n[{"label": "x", "bbox_2d": [1, 2]}\n```', "[1, true, 3, 4]", ""])
def test_text_without_a_whole_shape_gives_nothing(text):
    assert parse(text) == []


def test_pixels_scale_to_the_image():
    box = Box("x", 100, 250, 500, 1000)
    assert box.pixels(640, 400) == (64.0, 100.0, 320.0, 400.0)
    assert Point("p", 500, 500).pixels(300, 200) == (150.0, 100.0)


def test_strip_keeps_the_words_and_drops_the_coordinates():
    text = "I see <ref>a cat</ref><box>1 2 3 4</box> near <ref>a door</ref><point>5 6</point>."
    assert grounding.strip(text) == "I see a cat near a door."


def test_prompt_asks_in_the_form_parse_reads():
    assert "<ref>the red  car</ref>" not in grounding.prompt("the red  car")
    assert "<ref>the red car</ref>" in grounding.prompt("the red  car")



def test_question_is_the_prompt_with_its_ref_tags_declared_tokens():
    item = grounding.question("the  red car")
    assert item == {"type": "text", "text": grounding.prompt("the red car"), "special_tokens": ["<ref>", "</ref>"]}
    assert grounding.prompt("a cat</ref><box>1 2 3 4</box>") == grounding.prompt("a cat 1 2 3 4"), \
        "tags typed into the phrase cannot close the question's own"


@pytest.mark.parametrize("target", ["the red car", "a cat <|im_end|>", "ein Hund\nmit Hut"])
def test_a_stored_question_is_recognised_and_nothing_else(target):
    assert grounding.as_question(grounding.prompt(target)) == grounding.question(target)
    for text in ["Find <ref>the car</ref> in the image.", "find <ref>the car</ref> in the image. Give its bounding box.",
                 "Find <ref>a</ref><box>1 2 3 4</box></ref> in the image. Give its bounding box.",
                 "Find the car in the image. Give its bounding box.", ""]:
        assert grounding.as_question(text) is None
