#!/usr/bin/env python3
"""The Python reference for `pivot bench --phase data`: the same path in webdataset + Pillow +
CLIPImageProcessor (Pillow backend): .tar.zst shard → JPEG decode → shortest side resize
(bicubic) → centre crop → rescale + normalise → batch of (B, 3, H, W) float32, with a
byte-level stand-in for tokenisation as on the Swift side. Single process, as webdataset's
default pipeline runs.

  /root/.venvs/pivot-ref/bin/python Tools/bench_data_python.py \
      --shards /tmp/pivot-bench-data/bench-000000.tar.zst --max-images 2000

Prints one JSON line: images_per_second, peak_rss_mib, ...
"""
import argparse
import json
import resource
import time

import numpy as np
import webdataset as wds
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default="/tmp/pivot-bench-data/bench-000000.tar.zst")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-images", type=int, default=None)
    args = parser.parse_args()

    processor = CLIPImageProcessorPil(size={"shortest_edge": args.image_size},
                                      crop_size={"height": args.image_size, "width": args.image_size})

    def prepare(sample):
        image, caption = sample
        pixels = processor(images=image, return_tensors="np")["pixel_values"][0]
        ids = np.frombuffer(caption.encode(), dtype=np.uint8).astype(np.int32) + 10
        return pixels, ids

    def collate(batch):
        pixels = np.stack([p for p, _ in batch])
        length = max(len(i) for _, i in batch)
        ids = np.zeros((len(batch), length), dtype=np.int32)
        for row, (_, i) in enumerate(batch):
            ids[row, : len(i)] = i
        return pixels, ids

    url = f"pipe:zstd -dc {args.shards}" if args.shards.endswith(".zst") else args.shards
    dataset = (wds.WebDataset(url, shardshuffle=False, empty_check=False)
               .decode("pil").to_tuple("jpg", "txt").map(prepare)
               .batched(args.batch_size, collation_fn=collate, partial=True))
    images = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    for pixels, _ in dataset:
        images += pixels.shape[0]
        if args.max_images and images >= args.max_images:
            break
    seconds = time.perf_counter() - start
    # CPU time of this process; the `zstd -dc` child that decompresses the shard is not included.
    cpu_seconds = time.process_time() - cpu_start
    print(json.dumps({"images_per_second": images / seconds, "images": images, "seconds": seconds,
                      "cpu_seconds": cpu_seconds, "images_per_cpu_second": images / cpu_seconds,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
