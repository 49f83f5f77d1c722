# Compile-fail tests: kernels that use something outside the emulated MSL
# subset must not compile (each file's first line gives the expected
# diagnostic as a regular expression). texture_attribute.metal is checked by
# the adapter generator instead of the compiler.
file(GLOB _fsdpa_cf_sources ${CMAKE_CURRENT_LIST_DIR}/compile_fail/*.metal)
foreach(_src IN LISTS _fsdpa_cf_sources)
  get_filename_component(_name ${_src} NAME_WE)
  file(STRINGS ${_src} _first LIMIT_COUNT 1)
  string(REGEX REPLACE "^// EXPECT: " "" _expect "${_first}")
  if(_name STREQUAL "texture_attribute")
    add_test(NAME msl_emu_compile_fail.${_name}
      COMMAND Python3::Interpreter ${FSDPA_MSL_EMU_DIR}/msl_emu_gen.py
              --cxx ${CMAKE_CXX_COMPILER} --source ${_src} --library cf --output ${CMAKE_CURRENT_BINARY_DIR}/cf_${_name}.cpp
              --prelude ${FSDPA_MSL_EMU_DIR}/include/fsdpa_msl_emu/parse_prelude.h
              --shim ${FSDPA_MSL_EMU_DIR}/include/fsdpa_msl_emu/shim.h
              --include-dir ${FSDPA_MSL_EMU_DIR}/stub)
  else()
    add_test(NAME msl_emu_compile_fail.${_name}
      COMMAND ${CMAKE_CXX_COMPILER} -std=c++20 -fsyntax-only -x c++
              -include ${FSDPA_MSL_EMU_DIR}/include/fsdpa_msl_emu/shim.h ${FSDPA_MSL_EMU_KERNEL_CXX_FLAGS}
              -I${FSDPA_MSL_EMU_DIR}/include -I${FSDPA_MSL_EMU_DIR}/stub -I${FSDPA_MSL_EMU_KERNEL_INCLUDE_DIRS}
              ${_src})
  endif()
  set_tests_properties(msl_emu_compile_fail.${_name} PROPERTIES
    PASS_REGULAR_EXPRESSION "${_expect}" LABELS metal_emu TIMEOUT 60)
endforeach()
