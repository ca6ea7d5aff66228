"""Episodes (rosbag2 MCAP via `rosbags`), the training dataset, normalisation statistics, LIBERO import.

Public API:
    EpisodeWriter(path, cameras, image_size, dt, meta)   write one episode bag (+ episode.json sidecar)
    read_episode(path) -> Episode                         decode a bag into aligned arrays (EpisodeError if unusable)
    EpisodeDataset(root, chunk=16, action_mode=...)       samples {"images", "proprio", "instruction", "actions",
                                                          "action_mode", "action_pad"}
    compute_norm_stats(dataset) -> dict                   {"proprio": {mean,std,min,max}, "actions": {...}}
    import_libero(hdf5, out_dir) -> [bag paths]           LIBERO demos as episode bags
"""

from mambavla.data.bags import Episode, EpisodeError, EpisodeWriter, read_episode
from mambavla.data.dataset import DatasetError, EpisodeDataset, compute_norm_stats, find_episodes
from mambavla.data.libero import import_libero

__all__ = [
    "DatasetError",
    "Episode",
    "EpisodeDataset",
    "EpisodeError",
    "EpisodeWriter",
    "compute_norm_stats",
    "find_episodes",
    "import_libero",
    "read_episode",
]
