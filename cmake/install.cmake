# Install rules for C and C++ consumers: the libraries, the public header, a
# CMake package (find_package(flashsdpa) -> flashsdpa::flashsdpa) and a
# pkg-config file (pkg-config --cflags --libs flashsdpa). Both are
# relocatable: they find the headers and libraries relative to where they are
# installed. The Python wheel (scikit-build-core sets SKBUILD) ships only the
# extension module, so none of this goes into it.
if(SKBUILD)
  return()
endif()
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS flashsdpa flashsdpa_static
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${PROJECT_SOURCE_DIR}/include/flashsdpa/flashsdpa.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/flashsdpa)

# File names the package config points at (no generator expressions there).
set(FLASHSDPA_SHARED_FILE
    ${CMAKE_SHARED_LIBRARY_PREFIX}flashsdpa${CMAKE_SHARED_LIBRARY_SUFFIX}.${PROJECT_VERSION})
set(FLASHSDPA_SHARED_SONAME
    ${CMAKE_SHARED_LIBRARY_PREFIX}flashsdpa${CMAKE_SHARED_LIBRARY_SUFFIX}.${PROJECT_VERSION_MAJOR})
if(APPLE)
  set(FLASHSDPA_SHARED_FILE libflashsdpa.${PROJECT_VERSION}.dylib)
  set(FLASHSDPA_SHARED_SONAME @rpath/libflashsdpa.${PROJECT_VERSION_MAJOR}.dylib)
endif()
set(FLASHSDPA_STATIC_FILE
    ${CMAKE_STATIC_LIBRARY_PREFIX}flashsdpa_static${CMAKE_STATIC_LIBRARY_SUFFIX})

set(_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/flashsdpa)
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/flashsdpaConfig.cmake.in
  ${PROJECT_BINARY_DIR}/flashsdpaConfig.cmake INSTALL_DESTINATION ${_cmake_dir})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/flashsdpaConfigVersion.cmake
  COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/flashsdpaConfig.cmake
              ${PROJECT_BINARY_DIR}/flashsdpaConfigVersion.cmake
        DESTINATION ${_cmake_dir})

file(RELATIVE_PATH FLASHSDPA_PC_TO_PREFIX /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
configure_file(${CMAKE_CURRENT_LIST_DIR}/flashsdpa.pc.in ${PROJECT_BINARY_DIR}/flashsdpa.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/flashsdpa.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
