"""Read a COCO annotation file and check every field a training run relies on, before any image.

``parse_annotations`` loads the JSON once and returns it with the per-annotation arrays
``CocoDetection`` indexes (boxes, labels, image ids); the first problem found (a missing field, a
box of the wrong length, a ``file_name`` resolving outside the image folder, ...) is an
``InvalidAnnotations`` naming the file and the entry.
"""

import json
import os
from collections import defaultdict

import numpy as np


class InvalidAnnotations(ValueError):
    """An annotation file that cannot be trained on; the message names the file and the field."""


def _first_bad(values, ok):
    for k, v in enumerate(values):
        if not ok(v):
            return k
    return None


def _is_int(v):
    return type(v) is int


def _int_array(values):
    """int64 array of ``values`` if all are JSON integers, else the index of the first that isn't."""
    if set(map(type, values)) <= {int}:
        try:
            return np.array(values, np.int64).reshape(-1), None
        except OverflowError:
            pass
    return None, _first_bad(values, lambda v: _is_int(v) and -(2**63) <= v < 2**63)


def _is_number(v):
    return type(v) in (int, float)


def _escapes(file_name, image_dir):
    """Whether ``file_name`` names a path outside ``image_dir`` (checked on the names only).

    Refused: any ``..`` component (even one that would come back inside: through a symbolic
    link, ``a/../b`` is not ``b``), and an absolute path that is not under ``image_dir`` (as
    given or with its symbolic links resolved). Symbolic links inside ``image_dir`` are
    followed wherever they point: only someone who can write the folder can make one, and
    datasets kept as links into a cache (git-annex, DVC) rely on that.
    """
    parts = file_name.replace(os.sep, "/").split("/")
    if ".." in parts:
        return True
    if not os.path.isabs(file_name):
        return False
    target = os.path.normpath(file_name)
    for root in {os.path.abspath(image_dir), os.path.realpath(image_dir)}:
        if target.startswith(root.rstrip(os.sep) + os.sep):
            return False
    return True


def parse_annotations(annotation_file, image_dir):
    """Read and check the whole annotation file; returns ``(data, arrays)``."""
    name = annotation_file

    def fail(message):
        raise InvalidAnnotations(f"{name}: {message}")

    if not os.path.isfile(annotation_file):
        raise InvalidAnnotations(f"annotation_file {name!r} does not exist or is not a file.")
    if not os.path.isdir(image_dir):
        raise InvalidAnnotations(f"image_dir {image_dir!r} does not exist or is not a directory.")
    try:
        with open(annotation_file, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        fail(f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.")
    except UnicodeDecodeError as e:
        fail(f"not valid JSON text: {e}.")
    if not isinstance(data, dict):
        fail(
            "expected a COCO object with 'images', 'annotations' and 'categories'; got a JSON "
            f"{type(data).__name__}."
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            fail(
                f"'{key}' must be a list; "
                + ("it is missing." if key not in data else f"got {type(data[key]).__name__}.")
            )
    images, anns, cats = data["images"], data["annotations"], data["categories"]
    if not images:
        fail("'images' is empty.")
    if not cats:
        fail("'categories' is empty; at least one category is needed.")

    # Images: integer ids, unique; non-empty file names.
    k = _first_bad(images, lambda im: isinstance(im, dict))
    if k is not None:
        fail(f"images[{k}] must be an object; got {images[k]!r}.")
    img_ids, k = _int_array([im.get("id") for im in images])
    if k is not None:
        fail(f"images[{k}] needs an integer 'id'; got {images[k].get('id')!r}.")
    file_names = [im.get("file_name") for im in images]
    k = _first_bad(file_names, lambda f: isinstance(f, str) and f != "")
    if k is not None:
        fail(f"image id {img_ids[k]} needs a 'file_name' string; got {file_names[k]!r}.")
    # File names stay inside image_dir: an annotation file from elsewhere must not make kzoo
    # read (or train on) files outside the folder it was given.
    for k, fname in enumerate(file_names):
        if _escapes(fname, image_dir):
            fail(
                f"image id {img_ids[k]} names file {fname!r}, which is outside image_dir "
                f"{image_dir!r}; a file_name must be a path inside image_dir (no '..' "
                "component, no absolute path elsewhere)."
            )
    uniq, counts = np.unique(img_ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        fail(f"image id {dup[0]} appears {counts[counts > 1][0]} times in 'images'.")

    # Categories: integer ids, unique.
    k = _first_bad(cats, lambda c: isinstance(c, dict))
    if k is not None:
        fail(f"categories[{k}] must be an object; got {cats[k]!r}.")
    cat_ids, k = _int_array([c.get("id") for c in cats])
    if k is not None:
        fail(f"categories[{k}] needs an integer 'id'; got {cats[k].get('id')!r}.")
    uniq, counts = np.unique(cat_ids, return_counts=True)
    if (counts > 1).any():
        fail(f"category id {uniq[counts > 1][0]} appears more than once in 'categories'.")

    # Annotations.
    k = _first_bad(anns, lambda a: isinstance(a, dict))
    if k is not None:
        fail(f"annotations[{k}] must be an object; got {anns[k]!r}.")
    ann_ids, k = _int_array([a.get("id") for a in anns])
    if k is not None:
        fail(f"annotations[{k}] needs an integer 'id'; got {anns[k].get('id')!r}.")
    uniq, counts = np.unique(ann_ids, return_counts=True)
    if (counts > 1).any():
        fail(f"annotation id {uniq[counts > 1][0]} appears more than once in 'annotations'.")
    ann_img, k = _int_array([a.get("image_id") for a in anns])
    if k is not None:
        fail(
            f"annotation id {ann_ids[k]} needs an integer 'image_id'; got {anns[k].get('image_id')!r}."
        )
    sorted_img = np.sort(img_ids)
    img_pos = np.minimum(np.searchsorted(sorted_img, ann_img), len(sorted_img) - 1)
    bad = np.flatnonzero(sorted_img[img_pos] != ann_img)
    if len(bad):
        more = f" ({len(bad) - 1} more annotations refer to missing images)" if len(bad) > 1 else ""
        fail(
            f"annotation id {ann_ids[bad[0]]} refers to image id {ann_img[bad[0]]}, which is not "
            f"in 'images'{more}."
        )
    ann_cat, k = _int_array([a.get("category_id") for a in anns])
    if k is not None:
        fail(
            f"annotation id {ann_ids[k]} (image id {ann_img[k]}) needs an integer 'category_id'; "
            f"got {anns[k].get('category_id')!r}."
        )
    sorted_cat = np.sort(cat_ids)
    cat_pos = np.minimum(np.searchsorted(sorted_cat, ann_cat), len(sorted_cat) - 1)
    bad = np.flatnonzero(sorted_cat[cat_pos] != ann_cat)
    if len(bad):
        known = ", ".join(str(c) for c in sorted_cat[:20]) + (
            ", ..." if len(sorted_cat) > 20 else ""
        )
        more = f" ({len(bad) - 1} more such annotations)" if len(bad) > 1 else ""
        fail(
            f"annotation id {ann_ids[bad[0]]} (image id {ann_img[bad[0]]}) has category_id "
            f"{ann_cat[bad[0]]}, which is not in 'categories' (ids {known}){more}."
        )

    bboxes = [a.get("bbox") for a in anns]
    shaped = all(type(b) is list and len(b) == 4 for b in bboxes)
    numeric = shaped and set(map(type, (v for b in bboxes for v in b))) <= {int, float}
    if numeric:
        xywh = np.array(bboxes, np.float64).reshape(-1, 4)
        bad = np.flatnonzero(~np.isfinite(xywh).all(axis=1) | (xywh[:, 2] < 0) | (xywh[:, 3] < 0))
        first = bad[0] if len(bad) else None
    else:
        first = _first_bad(
            bboxes, lambda b: type(b) is list and len(b) == 4 and all(map(_is_number, b))
        )
        bad = [first]
    if first is not None:
        more = f" ({len(bad) - 1} more bad boxes)" if len(bad) > 1 else ""
        fail(
            f"annotation id {ann_ids[first]} (image id {ann_img[first]}) has bbox "
            f"{bboxes[first]!r}; expected 4 finite numbers [x, y, width, height] with width "
            f"and height >= 0{more}."
        )
    crowd = [a.get("iscrowd", 0) for a in anns]
    k = _first_bad(crowd, lambda c: type(c) in (int, bool) and c in (0, 1))
    if k is not None:
        fail(f"annotation id {ann_ids[k]} has iscrowd {crowd[k]!r}; expected 0 or 1.")

    # Every image file must exist: one directory listing per folder, not one stat per image.
    by_dir = defaultdict(list)
    for k, fname in enumerate(file_names):
        full = os.path.join(image_dir, fname)
        by_dir[os.path.dirname(full)].append((k, os.path.basename(full), full))
    missing = []
    for folder, entries in by_dir.items():
        try:
            with os.scandir(folder) as it:
                present = {e.name for e in it if e.is_file()}
        except OSError:
            present = set()
        # A name not in the listing may still open (case-insensitive file systems).
        missing += [
            k for k, base, full in entries if base not in present and not os.path.isfile(full)
        ]
    if missing:
        k = min(missing)
        more = f" ({len(missing) - 1} more image files are missing)" if len(missing) > 1 else ""
        fail(
            f"image id {img_ids[k]} names file {file_names[k]!r}, which is not in image_dir "
            f"{image_dir!r}{more}."
        )
    xywh = xywh.reshape(-1, 4)
    return data, {
        "ann_ids": ann_ids,
        "ann_img": ann_img,
        "ann_cat": ann_cat,
        "xywh": xywh,
        "crowd": np.array(crowd, bool).reshape(-1),
    }
