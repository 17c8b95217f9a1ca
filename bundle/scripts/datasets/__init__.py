"""Data set readers and generators that produce the project's datalist."""

from .common import PreparedAnatomy, PrepareError, write_datalist
from .hand_atlas import prepare_hand, wrist_spacing
from .isbi2015 import prepare_isbi2015, read_isbi2015_labels
from .shenzhen import prepare_shenzhen, read_shenzhen_labels
from .generic import prepare_generic, read_landmark_file
