"""The toy world and everything between it and a model: tasks, tokenizer, collation, judges, folders."""
from .collate import IGNORE, Collator, Mixture, make_loader, media_tensor
from .folder import Folder, write_folder
from .judges import judge
from .tasks import COMPOSE, SPLITS, TASKS, get_sample
from .tokenizer import MEDIA, Tokenizer

__all__ = ["IGNORE", "Collator", "Mixture", "make_loader", "media_tensor", "Folder", "write_folder",
           "COMPOSE", "SPLITS", "TASKS", "get_sample", "judge", "MEDIA", "Tokenizer"]
