"""Image sets (folder, CSV, .npz), splits and preprocessing."""
from graft.data.sources import ImageSet, load_images
from graft.data.split import stratified_split

__all__ = ["ImageSet", "load_images", "stratified_split"]
