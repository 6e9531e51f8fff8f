"""Lesson 5's detector: shapes data in COCO format, a YOLOv7-family model, loss, NMS, COCOeval, training.

Introduced in ``05_yolov7_ptq.ipynb``. Submodules: :mod:`.data`, :mod:`.model`, :mod:`.boxes`,
:mod:`.loss`, :mod:`.evaluate`, :mod:`.train`, :mod:`.official`. Needs the ``ptq`` extra
(``pip install -e '.[ptq]'``) for pycocotools (COCOeval).
"""
