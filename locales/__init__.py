"""Babel message catalogs: locales/<lang>/LC_MESSAGES/<domain>.po (source) and .mo (compiled).

Edit the .po files, then `make locales` (re-extracts keys, compiles). core.po holds the base
conversation; each feature has its own domain (report.po, broadcast.po...).


"""
