"""Fax documents: what in a mail can be faxed, checking it, building one document, cover pages,
and the conversions inbound faxes need (TIFF to PDF, a PNG preview of page 1)."""
