# Relocatable install: headers, the INTERFACE core, the CPU library, the CLI, and a CMake package
# config so that consumers write find_package(qforge CONFIG REQUIRED).
include(CMakePackageConfigHelpers)
install(DIRECTORY include/qforge DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
set(_qforge_targets qforge)
if(TARGET qforge_cpu)
  list(APPEND _qforge_targets qforge_cpu)
endif()
install(TARGETS ${_qforge_targets} EXPORT qforgeTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET qforge_cli)
  install(TARGETS qforge_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
install(EXPORT qforgeTargets NAMESPACE qforge:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/qforge)
# qforge::xtensor has its own export set: the package config loads it only where the consumer's
# machine has xtensor, so find_package(qforge) never needs xtensor unless asked for the component.
set(QFORGE_HAS_XTENSOR OFF)
if(TARGET qforge_xtensor)
  set(QFORGE_HAS_XTENSOR ON)
  install(TARGETS qforge_xtensor EXPORT qforgeXtensorTargets)
  install(EXPORT qforgeXtensorTargets NAMESPACE qforge:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/qforge)
endif()
get_property(QFORGE_CPU_USES_OPENMP GLOBAL PROPERTY QFORGE_CPU_USES_OPENMP)
if(NOT QFORGE_CPU_USES_OPENMP)
  set(QFORGE_CPU_USES_OPENMP OFF)
endif()
configure_package_config_file(cmake/qforgeConfig.cmake.in
  ${PROJECT_BINARY_DIR}/qforgeConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/qforge)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/qforgeConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/qforgeConfig.cmake ${PROJECT_BINARY_DIR}/qforgeConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/qforge)
