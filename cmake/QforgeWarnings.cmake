# qforge_set_warnings(target): our own targets only; the INTERFACE core never forces
# warning flags on a user's code.
function(qforge_set_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow=local
                                             -Wno-unused-parameter)
    if(QFORGE_WERROR)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
  endif()
endfunction()
