"""Face detection with facenet-pytorch's MTCNN networks, batched and with a trimmed image pyramid.

facenet-pytorch runs P-Net over a pyramid that starts at 12/min_face_size (0.6 for its default 20 px)
and spends most of its time on the largest levels, which only find faces a few dozen pixels high.
Faces in this task fill a good part of the photo, so `FaceDetector` keeps exactly the same pyramid
levels but skips those whose 12 px window stands for a face smaller than `min_face_px`; R-Net and
O-Net then refine the same candidates on the full-resolution image, so boxes and landmarks agree
with the untrimmed detector (bench/preprocess.py measures how closely) at a fraction of the cost.
Images of equal size are processed as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PNET_WINDOW = 12
REFERENCE_MIN_FACE = 20  # facenet-pytorch's default: the pyramid's levels are those of this value


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    prob: float
    landmarks: list[tuple[float, float]]  # left eye, right eye, nose, mouth left, mouth right

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def pyramid_scales(height: int, width: int, min_face_px: float, factor: float = 0.709) -> list[float]:
    """facenet-pytorch's pyramid levels for its default min face size, minus the levels that only
    detect faces smaller than min_face_px."""
    m = PNET_WINDOW / REFERENCE_MIN_FACE
    minl = min(height, width) * m
    scales, s = [], m
    while minl >= PNET_WINDOW:
        scales.append(s)
        s *= factor
        minl *= factor
    keep = [s for s in scales if PNET_WINDOW / s >= min_face_px * 0.999]
    return keep or scales[-1:]


class FaceDetector:
    """MTCNN (facenet-pytorch weights) over batches of equal-size RGB uint8 images."""

    def __init__(self, device: str = "cpu", min_face_px: float = 36.0, thresholds=(0.6, 0.7, 0.7),
                 factor: float = 0.709):
        import torch
        from facenet_pytorch import MTCNN

        self.device = torch.device(device)
        mtcnn = MTCNN(device=self.device)
        # channels_last runs these small convolutional nets several times faster on CPU (same results)
        self.pnet, self.rnet, self.onet = (net.eval().to(memory_format=torch.channels_last)
                                           for net in (mtcnn.pnet, mtcnn.rnet, mtcnn.onet))
        self.min_face_px = min_face_px
        self.thresholds = thresholds
        self.factor = factor

    def detect(self, images: np.ndarray) -> list[list[Face]]:
        """images: N x H x W x 3 uint8 (RGB). Returns the faces of each image, best first."""
        import torch

        with torch.inference_mode():
            array = np.ascontiguousarray(images)
            if not array.flags.writeable:
                array = array.copy()
            boxes, points = self._detect(torch.as_tensor(array, device=self.device))
        out = []
        for b, p in zip(boxes, points):
            faces = [Face(tuple(float(v) for v in row[:4]), float(row[4]), [tuple(map(float, xy)) for xy in pts])
                     for row, pts in zip(b, p)]
            out.append(faces)
        return out

    def _detect(self, imgs):
        """facenet_pytorch.models.utils.detect_face.detect_face with an explicit list of pyramid scales."""
        import torch
        from facenet_pytorch.models.utils.detect_face import (
            batched_nms, batched_nms_numpy, bbreg, fixed_batch_process, generateBoundingBox, imresample, pad, rerec,
        )

        threshold = self.thresholds
        imgs = imgs.permute(0, 3, 1, 2).float()
        batch_size = len(imgs)
        h, w = imgs.shape[2:4]
        scales = pyramid_scales(h, w, self.min_face_px, self.factor)
        boxes, image_inds, scale_picks, offset = [], [], [], 0
        for scale in scales:
            im_data = imresample(imgs, (int(h * scale + 1), int(w * scale + 1)))
            im_data = ((im_data - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last)
            reg, probs = self.pnet(im_data)
            boxes_scale, image_inds_scale = generateBoundingBox(reg, probs[:, 1], scale, threshold[0])
            boxes.append(boxes_scale)
            image_inds.append(image_inds_scale)
            pick = batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], image_inds_scale, 0.5)
            scale_picks.append(pick + offset)
            offset += boxes_scale.shape[0]
        boxes = torch.cat(boxes, dim=0)
        image_inds = torch.cat(image_inds, dim=0)
        scale_picks = torch.cat(scale_picks, dim=0)
        boxes, image_inds = boxes[scale_picks], image_inds[scale_picks]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds = boxes[pick], image_inds[pick]
        regw = boxes[:, 2] - boxes[:, 0]
        regh = boxes[:, 3] - boxes[:, 1]
        qq1 = boxes[:, 0] + boxes[:, 5] * regw
        qq2 = boxes[:, 1] + boxes[:, 6] * regh
        qq3 = boxes[:, 2] + boxes[:, 7] * regw
        qq4 = boxes[:, 3] + boxes[:, 8] * regh
        boxes = torch.stack([qq1, qq2, qq3, qq4, boxes[:, 4]]).permute(1, 0)
        boxes = rerec(boxes)
        y, ey, x, ex = pad(boxes, w, h)
        def crops(size: int):
            """Each candidate box cut from the full-resolution image and resized to size x size
            (area interpolation, exactly as facenet-pytorch does)."""
            out = [imresample(imgs[image_inds[k], :, (y[k] - 1):ey[k], (x[k] - 1):ex[k]].unsqueeze(0), (size, size))
                   for k in range(len(y)) if ey[k] > (y[k] - 1) and ex[k] > (x[k] - 1)]
            return ((torch.cat(out, dim=0) - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last)

        if len(boxes) > 0:  # R-Net on full-resolution crops
            im_data = crops(24)
            out = fixed_batch_process(im_data, self.rnet)
            out0, out1 = out[0].permute(1, 0), out[1].permute(1, 0)
            score = out1[1, :]
            ipass = score > threshold[1]
            boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
            image_inds = image_inds[ipass]
            mv = out0[:, ipass].permute(1, 0)
            pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
            boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
            boxes = bbreg(boxes, mv)
            boxes = rerec(boxes)
        points = torch.zeros(0, 5, 2, device=imgs.device)
        if len(boxes) > 0:  # O-Net on full-resolution crops: final boxes and landmarks
            y, ey, x, ex = pad(boxes, w, h)
            out = fixed_batch_process(crops(48), self.onet)
            out0, out1, out2 = out[0].permute(1, 0), out[1].permute(1, 0), out[2].permute(1, 0)
            score = out2[1, :]
            points = out1
            ipass = score > threshold[2]
            points = points[:, ipass]
            boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
            image_inds = image_inds[ipass]
            mv = out0[:, ipass].permute(1, 0)
            w_i = boxes[:, 2] - boxes[:, 0] + 1
            h_i = boxes[:, 3] - boxes[:, 1] + 1
            points_x = w_i.repeat(5, 1) * points[:5, :] + boxes[:, 0].repeat(5, 1) - 1
            points_y = h_i.repeat(5, 1) * points[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
            points = torch.stack((points_x, points_y)).permute(2, 1, 0)
            boxes = bbreg(boxes, mv)
            pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
            boxes, image_inds, points = boxes[pick], image_inds[pick], points[pick]
        boxes = boxes.cpu().numpy()
        points = points.cpu().numpy()
        image_inds = image_inds.cpu().numpy()
        per_boxes, per_points = [], []
        for b_i in range(batch_size):
            sel = np.where(image_inds == b_i)[0]
            order = sel[np.argsort(-boxes[sel, 4])] if len(sel) else sel
            per_boxes.append(boxes[order])
            per_points.append(points[order])
        return per_boxes, per_points
