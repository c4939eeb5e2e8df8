# LibTorch on Debian only recommends OpenBLAS; with the reference BLAS behind
# libblas.so.3 every GEMM is ~30x slower. Refuse to build on such a machine
# rather than produce a binary that trains at a crawl.
function(dsk_check_blas)
  find_library(DSK_LIBBLAS NAMES libblas.so.3 blas)
  if(NOT DSK_LIBBLAS)
    return()
  endif()
  get_filename_component(real "${DSK_LIBBLAS}" REALPATH)
  if(real MATCHES "openblas|mkl|blis|atlas")
    message(STATUS "BLAS: ${real}")
  else()
    message(FATAL_ERROR
      "libblas.so.3 resolves to ${real}, the reference BLAS (about 30x slower). "
      "Install libopenblas0-pthread (scripts/install-deps.sh does) or pass -DDSK_CHECK_BLAS=OFF.")
  endif()
endfunction()
