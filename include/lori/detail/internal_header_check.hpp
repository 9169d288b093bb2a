// Included first by every header under lori/detail/. Those headers are private: they may change
// without notice, and they rely on lori/config.hpp having been included by a public header.
// (Eigen does the same with its InternalHeaderCheck.h.)
#ifndef LORI_PUBLIC_HEADER_SEEN
#error "lori/detail/* headers are private: include a public lori header (e.g. <lori.hpp>) instead"
#endif
