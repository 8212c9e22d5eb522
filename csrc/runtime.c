/*
 * runtime.c — error messages, build facts and thread control.
 *
 * The last error is kept per thread (C11 _Thread_local), so two Python threads
 * calling the core at once cannot read each other's message.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

#ifndef MG_VERSION
#define MG_VERSION "0.1.0"
#endif

static _Thread_local char last_error[512];

mg_status mg_fail(mg_status status, const char* func, const char* fmt, ...) {
    va_list ap;
    int n = snprintf(last_error, sizeof last_error, "%s: ", func);
    if (n < 0 || n >= (int)sizeof last_error) n = 0;
    va_start(ap, fmt);
    vsnprintf(last_error + n, sizeof last_error - (size_t)n, fmt, ap);
    va_end(ap);
    return status;
}

const char* mg_last_error(void) { return last_error; }

const char* mg_version(void) { return MG_VERSION; }

const char* mg_compiler(void) {
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#else
    return "unknown";
#endif
}

const char* mg_simd(void) {
#if defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
    return "avx512+avx2+fma";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2+fma";
#else
    return "portable";
#endif
}

int mg_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int mg_get_num_threads(void) { return omp_get_max_threads(); }

mg_status mg_set_num_threads(int n) {
    MG_CHECK(n >= 1, MG_ERR_VALUE, "thread count %d must be at least 1", n);
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    return MG_OK;
}
