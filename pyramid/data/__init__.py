"""Video data for the spatiotemporal pyramid: readers, frame/flow extraction, sampling,
augmentation and a synthetic dataset generator.

See the README (Training the Spatiotemporal Pyramid) and ``reference/paper-notes.md`` for the conventions (UCF101 /
HMDB51 splits, mmaction2 rawframes, TSN flow encoding, crop scales).
"""
from .augment import (FLOW_SCALES, RGB_SCALES, center_crop, crop_resize, fixed_offsets,
                      flip_flow_codes, multiscale_crop_params, ten_crops)
from .dataset import PyramidClips, load_stack
from .extract import ExtractOptions, ExtractSummary, extract_tree, extract_video
from .flow import FLOW_BOUND, compute_flow, decode_flow, encode_flow, to_network
from .readers import (MissingVideoWarning, VideoRecord, load_file_list_records, load_split_records,
                      read_class_index, read_file_list, read_hmdb51_split, read_split,
                      read_ucf101_split, scan_videos, write_file_list)
from .sampling import snippet_indices, eval_clips, train_clip
from .video import VideoReadError, read_video, write_video

__all__ = [
    "FLOW_BOUND", "FLOW_SCALES", "RGB_SCALES", "ExtractOptions", "ExtractSummary",
    "MissingVideoWarning", "PyramidClips", "VideoReadError", "VideoRecord", "center_crop",
    "compute_flow", "crop_resize", "decode_flow", "encode_flow", "eval_clips", "extract_tree",
    "extract_video", "fixed_offsets", "flip_flow_codes", "load_file_list_records",
    "load_split_records", "load_stack", "multiscale_crop_params", "read_class_index",
    "read_file_list", "read_hmdb51_split", "read_split", "read_ucf101_split", "read_video",
    "scan_videos", "snippet_indices", "ten_crops", "to_network", "train_clip", "write_file_list",
    "write_video",
]
