# CMake support of the MSL emulation harness (test-only).
#
#   fsdpa_add_msl_kernel_library(<target>
#       SOURCE <file.metal>
#       [DEFINES NAME=VALUE ...]        # the -D specialisation of this variant
#       [INCLUDE_DIRS dir ...])
#
# Compiles <file.metal> as C++ with the MSL shim force-included, and makes
# <target> an OBJECT library that registers every `kernel` of the file under
# the library name <target>. Link it into a test executable
# (target_link_libraries(test PRIVATE <target>)) and look kernels up with
# fsdpa_emu::Kernel::find("<target>", "<kernel name>"). Each specialisation
# (set of DEFINES) is its own target; they can share a test binary.
#
# src/metal/kernels is always on the include path (fsdpa_metal_compat.h).

set(FSDPA_MSL_EMU_DIR ${CMAKE_CURRENT_LIST_DIR} CACHE INTERNAL "")
get_filename_component(_fsdpa_root "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(FSDPA_MSL_EMU_KERNEL_INCLUDE_DIRS ${_fsdpa_root}/src/metal/kernels CACHE INTERNAL "")
find_package(Python3 REQUIRED COMPONENTS Interpreter)
# Warning flags of kernel translation units. -Werror=double-promotion: in
# C++ `x * 0.1` with float x is computed in double; write 0.1f so that the
# emulation computes in float as the GPU does.
set(FSDPA_MSL_EMU_KERNEL_CXX_FLAGS -Wno-attributes -Wno-unknown-pragmas -Werror=double-promotion CACHE INTERNAL "")

function(fsdpa_add_msl_kernel_library target)
  cmake_parse_arguments(ARG "" "SOURCE" "DEFINES;INCLUDE_DIRS" ${ARGN})
  if(NOT ARG_SOURCE)
    message(FATAL_ERROR "fsdpa_add_msl_kernel_library(${target}): SOURCE is required")
  endif()
  get_filename_component(src "${ARG_SOURCE}" ABSOLUTE)
  set(out "${CMAKE_CURRENT_BINARY_DIR}/msl_emu/${target}.cpp")
  set(shim "${FSDPA_MSL_EMU_DIR}/include/fsdpa_msl_emu/shim.h")
  set(incs ${FSDPA_MSL_EMU_DIR}/stub ${FSDPA_MSL_EMU_KERNEL_INCLUDE_DIRS} ${ARG_INCLUDE_DIRS})
  set(gen_args)
  foreach(d IN LISTS ARG_DEFINES)
    list(APPEND gen_args --define ${d})
  endforeach()
  foreach(i IN LISTS incs)
    list(APPEND gen_args --include-dir ${i})
  endforeach()
  add_custom_command(
    OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/msl_emu
    COMMAND Python3::Interpreter ${FSDPA_MSL_EMU_DIR}/msl_emu_gen.py
            --cxx ${CMAKE_CXX_COMPILER} --source ${src} --library ${target} --output ${out}
            --depfile ${out}.d --prelude ${FSDPA_MSL_EMU_DIR}/include/fsdpa_msl_emu/parse_prelude.h
            --shim ${shim} ${gen_args}
    DEPENDS ${src} ${FSDPA_MSL_EMU_DIR}/msl_emu_gen.py
    DEPFILE ${out}.d
    COMMENT "MSL emulation: ${ARG_SOURCE} -> ${target}"
    VERBATIM)
  add_library(${target} OBJECT ${out})
  target_link_libraries(${target} PUBLIC fsdpa_msl_emu)
  target_include_directories(${target} PRIVATE ${incs})
  target_compile_definitions(${target} PRIVATE ${ARG_DEFINES})
  target_compile_options(${target} PRIVATE -include ${shim} ${FSDPA_MSL_EMU_KERNEL_CXX_FLAGS}
                                           -Wno-unused-parameter -Wno-unused-variable)
endfunction()
