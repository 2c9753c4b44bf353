"""The toy world and everything between it and a model: tasks, tokenizer, collation, folders."""
from .collate import IGNORE, Collator, Mixture, make_loader, media_tensor
from .tasks import SPLITS, TASKS, get_sample
from .tokenizer import MEDIA, Tokenizer
from .folder import Folder, write_folder
