if(QFORGE_SANITIZE)
  # Applied globally so the header-only core is instrumented in every test program.
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()
