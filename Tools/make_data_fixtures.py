#!/usr/bin/env python3
"""Makes the committed PivotData test fixtures (small) with Python references.

  images/        a few real JPEGs (RGB landscape/portrait, grayscale, CMYK, small, large)
                 cut from the photos that ship in the scikit-learn and matplotlib wheels,
                 plus captions.tsv for `pivot shards pack`
  clip/          CLIPImageProcessor (Pillow backend) output for each image: float32 (3, H, W),
                 little-endian, zstd-compressed; manifest.json lists them
  interop/       shards written by webdataset's ShardWriter, compressed with the `zstd` command
                 (ustar/pax and GNU long-name variants), and the samples webdataset reads back

With --pivot PATH (a built `pivot`), it also packs interop/pivot-000000.tar.zst with
`pivot shards pack`, then reads it with `zstd -d` + tarfile and webdataset and checks every
sample against the inputs. Run with the reference venv:

  /root/.venvs/pivot-ref/bin/python Tools/make_data_fixtures.py [--pivot .build/debug/pivot]
"""
import argparse
import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "Tests", "PivotDataTests", "Fixtures")


def source_photos(folder):
    """china.jpg and flower.jpg from scikit-learn, grace_hopper.jpg from matplotlib."""
    names = ["china.jpg", "flower.jpg", "grace_hopper.jpg"]
    if folder and all(os.path.exists(os.path.join(folder, n)) for n in names):
        return {n: os.path.join(folder, n) for n in names}
    folder = tempfile.mkdtemp(prefix="pivot-photos-")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", folder,
                    "scikit-learn", "matplotlib"], check=True)
    found = {}
    for wheel in glob.glob(os.path.join(folder, "*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                base = os.path.basename(member)
                if base in names:
                    path = os.path.join(folder, base)
                    with open(path, "wb") as out:
                        out.write(archive.read(member))
                    found[base] = path
    return found


def make_images(photos, out):
    os.makedirs(out, exist_ok=True)
    china = Image.open(photos["china.jpg"]).convert("RGB")
    flower = Image.open(photos["flower.jpg"]).convert("RGB")
    grace = Image.open(photos["grace_hopper.jpg"]).convert("RGB")
    made = {
        # name: (image, subsampling) — 4:2:0 is what most photos use, 4:4:4 some tools write
        "a_landscape.jpg": (china.resize((320, 213), Image.LANCZOS), 2),
        "b_portrait.jpg": (grace.crop((56, 0, 456, 600)).resize((200, 300), Image.LANCZOS), 2),
        "c_gray.jpg": (flower.crop((100, 0, 527, 427)).resize((256, 256), Image.LANCZOS).convert("L"), 2),
        "d_cmyk.jpg": (china.crop((200, 100, 440, 280)).convert("CMYK"), 2),
        "e_small.jpg": (flower.resize((150, 100), Image.LANCZOS), 0),
        "f_large.jpg": (grace, 2),
    }
    for name, (image, subsampling) in made.items():
        image.save(os.path.join(out, name), quality=90, subsampling=subsampling)
    captions = [
        ("a_landscape.jpg", "A pagoda among trees. 树林中的一座宝塔。"),
        ("b_portrait.jpg", "A portrait of an officer in uniform."),
        ("c_gray.jpg", "A grey flower, close up."),
        ("d_cmyk.jpg", "Roof tiles, printed in CMYK."),
        ("e_small.jpg", "A small picture of a flower.\tWith a tab."),
        ("f_large.jpg", "一位穿制服的军官的肖像。"),
    ]
    with open(os.path.join(out, "captions.tsv"), "w", encoding="utf-8") as f:
        f.write("image\tcaption\n")
        for name, caption in captions:
            f.write(f"{name}\t{caption.replace(chr(9), ' ')}\n")
    return sorted(made)


def clip_reference(images_dir, names, out):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    import PIL
    import transformers

    os.makedirs(out, exist_ok=True)
    manifest = {"pillow": PIL.__version__, "transformers": transformers.__version__, "entries": []}
    cases = [(n, 224) for n in names] + [("f_large.jpg", 64)]
    for name, size in cases:
        processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        image = Image.open(os.path.join(images_dir, name))
        mode = image.mode
        pixels = processor(images=image, return_tensors="np")["pixel_values"][0].astype("<f4")
        file = f"{os.path.splitext(name)[0]}.{size}.f32.zst"
        raw = os.path.join(out, file[:-4])
        pixels.tofile(raw)
        subprocess.run(["zstd", "-q", "-f", "-19", "--rm", raw, "-o", os.path.join(out, file)], check=True)
        manifest["entries"].append({"image": name, "mode": mode, "size": size, "shape": list(pixels.shape),
                                    "file": file})
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def interop_samples(images_dir):
    jpg = open(os.path.join(images_dir, "a_landscape.jpg"), "rb").read()
    small = open(os.path.join(images_dir, "e_small.jpg"), "rb").read()
    conversation = {"id": "x1", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the picture?"},
        {"from": "gpt", "value": "A pagoda among trees."}]}
    return [
        {"__key__": "000000", "jpg": jpg, "txt": "A pagoda. 一座宝塔。".encode(), "cls": b"3"},
        {"__key__": "000001", "jpg": small, "json": json.dumps(conversation, ensure_ascii=False).encode()},
        {"__key__": "000002", "txt": b"", "input.txt": b"several dots in the field"},
        {"__key__": "dir/000003", "txt": b"a key with a directory"},
        {"__key__": "k" * 120, "txt": b"a key longer than the 100 bytes of a ustar name"},
        {"__key__": "000005", "jpg": small, "txt": "尾".encode()},
    ]


def digest_samples(samples):
    result = []
    for sample in samples:
        fields = {k: hashlib.sha256(v).hexdigest() for k, v in sample.items()
                  if not k.startswith("__")}
        result.append({"key": sample["__key__"], "fields": fields,
                       "sizes": {k: len(v) for k, v in sample.items() if not k.startswith("__")}})
    return result


def read_webdataset(path):
    import webdataset as wds
    url = f"pipe:zstd -dc {path}" if path.endswith(".zst") else path
    dataset = wds.WebDataset(url, shardshuffle=False, empty_check=False)
    return [{k: v for k, v in s.items() if k != "__url__" and k != "__local_path__"} for s in dataset]


def make_interop(images_dir, out):
    import webdataset as wds

    os.makedirs(out, exist_ok=True)
    samples = interop_samples(images_dir)
    pattern = os.path.join(out, "py-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=100, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)
    plain = os.path.join(out, "py-000000.tar")
    subprocess.run(["zstd", "-q", "-f", "-10", plain, "-o", plain + ".zst"], check=True)

    # The same samples in GNU format: long names through `L` entries instead of pax.
    gnu = os.path.join(out, "py-gnu-000000.tar")
    with tarfile.open(gnu, "w", format=tarfile.GNU_FORMAT) as archive:
        for sample in samples:
            for field, data in sample.items():
                if field.startswith("__"):
                    continue
                info = tarfile.TarInfo(sample["__key__"] + "." + field)
                info.size = len(data)
                info.mtime = 1700000000
                archive.addfile(info, io.BytesIO(data))
    subprocess.run(["zstd", "-q", "-f", "--rm", gnu, "-o", gnu + ".zst"], check=True)

    expected = digest_samples(samples)
    for path in [plain, plain + ".zst", gnu + ".zst"]:
        got = digest_samples(read_webdataset(path))
        assert got == expected, f"webdataset reads {path} differently from what was written"
    with open(os.path.join(out, "py_expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)


def check_pivot_shard(pivot, images_dir, out):
    """Packs with Pivot, then reads the result with tarfile and webdataset."""
    pattern = os.path.join(out, "pivot-%06d.tar.zst")
    for old in glob.glob(os.path.join(out, "pivot-*.tar.zst")):
        os.remove(old)
    subprocess.run([pivot, "shards", "pack", "--images", images_dir,
                    "--captions", os.path.join(images_dir, "captions.tsv"), "--out", pattern], check=True)
    shard = os.path.join(out, "pivot-000000.tar.zst")
    expected = []
    with open(os.path.join(images_dir, "captions.tsv"), encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t", 1) for line in f][1:]
    for index, (image, caption) in enumerate(rows):
        expected.append({"__key__": f"{index:09d}",
                         "jpg": open(os.path.join(images_dir, image), "rb").read(),
                         "txt": caption.encode()})
    with tempfile.TemporaryDirectory() as scratch:
        tar_path = os.path.join(scratch, "pivot.tar")
        subprocess.run(["zstd", "-q", "-d", shard, "-o", tar_path], check=True)
        with tarfile.open(tar_path) as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
        from_tarfile = []
        for sample in expected:
            from_tarfile.append({"__key__": sample["__key__"],
                                 "jpg": members[sample["__key__"] + ".jpg"],
                                 "txt": members[sample["__key__"] + ".txt"]})
        assert len(members) == 2 * len(expected), "unexpected members in Pivot's shard"
        assert digest_samples(from_tarfile) == digest_samples(expected), "tarfile reads different samples"
        assert digest_samples(read_webdataset(tar_path)) == digest_samples(expected), \
            "webdataset reads different samples"
    print(f"Pivot shard {shard}: {len(expected)} samples read identically by tarfile and webdataset")

    # LLaVA-style conversations: `jpg` + `json` (the record, keys sorted), text-only records `json` only;
    # keys from the ids ('.' → '_'), one longer than a ustar name so that Pivot writes a pax header.
    for old in glob.glob(os.path.join(out, "pivot-llava-*.tar.zst")):
        os.remove(old)
    subprocess.run([pivot, "shards", "pack", "--images", images_dir, "--llava", os.path.join(images_dir, "llava.json"),
                    "--keys-from-ids", "--out", os.path.join(out, "pivot-llava-%06d.tar.zst")], check=True)
    records = json.load(open(os.path.join(images_dir, "llava.json"), encoding="utf-8"))
    with tempfile.TemporaryDirectory() as scratch:
        tar_path = os.path.join(scratch, "llava.tar")
        subprocess.run(["zstd", "-q", "-d", os.path.join(out, "pivot-llava-000000.tar.zst"), "-o", tar_path], check=True)
        samples = read_webdataset(tar_path)
    assert [s["__key__"] for s in samples] == [r["id"].replace(".", "_") for r in records]
    assert max(len(s["__key__"]) for s in samples) > 100
    for sample, record in zip(samples, records):
        assert json.loads(sample["json"]) == record, f"json differs for {record['id']}"
        if "image" in record:
            assert sample["jpg"] == open(os.path.join(images_dir, record["image"]), "rb").read()
        else:
            assert "jpg" not in sample
    print(f"Pivot LLaVA shard: {len(records)} samples (pax long name included) read identically by webdataset")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", help="folder holding china.jpg, flower.jpg, grace_hopper.jpg")
    parser.add_argument("--pivot", help="a built pivot binary: also pack and check Pivot's shard")
    parser.add_argument("--only-check-pivot", action="store_true", help="skip regenerating Python fixtures")
    args = parser.parse_args()
    images_dir = os.path.join(FIXTURES, "images")
    if not args.only_check_pivot:
        names = make_images(source_photos(args.photos), images_dir)
        clip_reference(images_dir, names, os.path.join(FIXTURES, "clip"))
        make_interop(images_dir, os.path.join(FIXTURES, "interop"))
        print("fixtures written to", os.path.normpath(FIXTURES))
    if args.pivot:
        check_pivot_shard(args.pivot, images_dir, os.path.join(FIXTURES, "interop"))


if __name__ == "__main__":
    main()
