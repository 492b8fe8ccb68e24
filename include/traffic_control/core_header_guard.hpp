// Every core header includes this file. The C++ core must stay independent of
// PostgreSQL: it is unit-tested without a server, and a PostgreSQL ERROR
// (a longjmp) must never unwind through C++ frames. Including postgres.h before
// a core header is therefore a compile error.
#pragma once
#if defined(POSTGRES_H) || defined(PG_VERSION_NUM)
#error "traffic_control core headers must not be compiled together with postgres.h"
#endif
#ifndef __cplusplus
#error "traffic_control core headers are C++; C code uses traffic_control/capi.h"
#endif
