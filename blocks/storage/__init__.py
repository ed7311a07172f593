"""Where a batch's files live: the `CloudFilesStorage` block and its two backends."""

from blocks.storage.block import CloudFilesStorage

__all__ = ["CloudFilesStorage"]
