"""Camera math shared by the geometry providers, the planar-pose provider and the plots.

Conventions: OpenCV pinhole cameras (x right, y down, z forward), extrinsics camera-from-world
``[R | t]`` (x_cam = R x_world + t), pixel (u, v) centred at integer coordinates, as VGGT's own
unprojection does.
"""
from __future__ import annotations

import numpy as np


def to_homogeneous(extrinsic: np.ndarray) -> np.ndarray:
    """[..., 3, 4] -> [..., 4, 4]."""
    out = np.zeros(extrinsic.shape[:-2] + (4, 4), np.float64)
    out[..., :3, :] = extrinsic
    out[..., 3, 3] = 1.0
    return out


def relative_to_first(extrinsic: np.ndarray) -> np.ndarray:
    """Re-express camera-from-world extrinsics [S,3,4] in the first camera's frame (VGGT's world).

    Returns float64 [S,3,4]; row 0 becomes [I | 0].
    """
    e = to_homogeneous(np.asarray(extrinsic, np.float64))
    return (e @ np.linalg.inv(e[0]))[:, :3, :]


def camera_centres(extrinsic: np.ndarray) -> np.ndarray:
    """[..., 3, 4] -> [..., 3] camera centres C = -R^T t in world coordinates."""
    r, t = np.asarray(extrinsic, np.float64)[..., :3], np.asarray(extrinsic, np.float64)[..., 3]
    return -np.einsum("...ji,...j->...i", r, t)


def optical_axes(extrinsic: np.ndarray) -> np.ndarray:
    """[..., 3, 4] -> [..., 3] unit optical axes (camera +z) in world coordinates: R^T e_z."""
    return np.asarray(extrinsic, np.float64)[..., 2, :3]


def unproject(depth: np.ndarray, intrinsic: np.ndarray, extrinsic: np.ndarray, stride: int = 1) -> np.ndarray:
    """World points of every ``stride``-th pixel.

    depth [S,H,W] z-depth, intrinsic [S,3,3], extrinsic [S,3,4] camera-from-world
    -> float64 [S, ceil(H/stride), ceil(W/stride), 3]. Invalid depths give meaningless points:
    the caller masks them.
    """
    d = np.asarray(depth, np.float64)[:, ::stride, ::stride]
    s, h, w = d.shape
    v, u = np.meshgrid(np.arange(0, depth.shape[1], stride, dtype=np.float64), np.arange(0, depth.shape[2], stride, dtype=np.float64), indexing="ij")
    k = np.asarray(intrinsic, np.float64)
    fx, fy, cx, cy = (k[:, 0, 0, None, None], k[:, 1, 1, None, None], k[:, 0, 2, None, None], k[:, 1, 2, None, None])
    cam = np.stack([(u - cx) / fx * d, (v - cy) / fy * d, d], axis=-1)  # [S,h,w,3]
    e = np.asarray(extrinsic, np.float64)
    r, t = e[:, :, :3], e[:, :, 3]
    # x_world = R^T (x_cam - t)
    return np.einsum("sji,shwj->shwi", r, cam - t[:, None, None, :])


def planar_poses(extrinsic: np.ndarray) -> np.ndarray:
    """Ground-plane poses (x forward, y left, yaw CCW) from extrinsics in a first-camera world.

    Assumes the first camera is level (its y axis along gravity), as for a robot's fixed camera:
    the ground plane is then the world x-z plane. x = C_z (forward), y = -C_x (left),
    yaw = atan2(-a_x, a_z) for optical axis a, so frame 0 is (0, 0, 0) and turning left is positive.
    extrinsic [S,3,4] -> float64 [S,3].
    """
    c, a = camera_centres(extrinsic), optical_axes(extrinsic)
    return np.stack([c[:, 2], -c[:, 0], np.arctan2(-a[:, 0], a[:, 2])], axis=-1)
