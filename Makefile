# `make` / `make install` for tools that expect a top-level PGXS Makefile
# (Debian's pg_buildext and the dh pgxs addons, the PGXN client). The build
# itself is Makefile.pgxs; `make -f Makefile.pgxs install` does the same.
include $(dir $(lastword $(MAKEFILE_LIST)))Makefile.pgxs
